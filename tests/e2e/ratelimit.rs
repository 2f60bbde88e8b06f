//! LocalRateLimit (policy.strait.io): 429 above the limit, never below it; rules first, with a
//! bucket per header value where asked.

use std::net::IpAddr;
use std::time::Duration;

use strait_e2e::mesh::{Endpoint, endpoints, service};
use strait_e2e::{Envoy, Strait, Upstream, eventually, http_client, loopback_ip};

const NS: &str = "rl";

async fn status(bind: IpAddr, headers: &[(&str, &str)]) -> u16 {
    let mut req = http_client()
        .get(format!("http://{bind}:8080/"))
        .header("host", "web");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.map(|r| r.status().as_u16()).unwrap_or(0)
}

/// Counts (ok, limited) over `n` requests sent one after another.
async fn burst(bind: IpAddr, n: usize, headers: &[(&str, &str)]) -> (usize, usize) {
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..n {
        match status(bind, headers).await {
            200 => ok += 1,
            429 => limited += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    (ok, limited)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_above_the_limit_get_429() {
    let web = Upstream::start("web-0", loopback_ip().into()).await;
    let strait = Strait::start_with(|dir| {
        std::fs::write(
            dir.join("web.yaml"),
            format!(
                "{}{}",
                service(NS, "web", 8080, "http"),
                endpoints(NS, "web", "http", &[Endpoint::ready(&web)])
            ),
        )
        .expect("write")
    })
    .await;
    let bind: IpAddr = loopback_ip().into();
    let envoy = Envoy::start("client", strait.sidecar(NS, "client", bind, false)).await;
    eventually("web routable", Duration::from_secs(10), || async {
        match status(bind, &[]).await {
            200 => Ok(()),
            s => Err(format!("status {s}")),
        }
    })
    .await;

    // A long interval: no refill can land inside a burst, so counts are exact.
    strait.write(
        "limit.yaml",
        &format!(
            "apiVersion: policy.strait.io/v1alpha1\nkind: LocalRateLimit\nmetadata: {{name: web, namespace: {NS}}}\n\
             spec:\n  host: web\n  limit: {{requests: 5, per: 60s}}\n  rules:\n\
             \x20 - match: {{headers: {{x-tier: {{exact: gold}}}}}}\n    limit: {{requests: 8, per: 60s}}\n\
             \x20 - perHeader: x-client\n    limit: {{requests: 3, per: 60s}}\n"
        ),
    );
    eventually("limit in force", Duration::from_secs(10), || async {
        if envoy
            .config_dump()
            .await
            .to_string()
            .contains("http_local_rate_limiter\",\"token_bucket")
        {
            Ok(())
        } else {
            Err("no per-route limit yet".into())
        }
    })
    .await;

    // The default bucket: exactly 5 of 9 pass, then 429 with rate-limit headers.
    assert_eq!(burst(bind, 9, &[]).await, (5, 4), "default limit");
    let r = http_client()
        .get(format!("http://{bind}:8080/"))
        .header("host", "web")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 429);
    assert!(
        r.headers().contains_key("x-ratelimit-limit"),
        "{:?}",
        r.headers()
    );

    // A matching rule has its own, larger bucket.
    assert_eq!(
        burst(bind, 10, &[("x-tier", "gold")]).await,
        (8, 2),
        "gold rule"
    );
    // Per header value: each client has its own bucket of 3.
    assert_eq!(
        burst(bind, 5, &[("x-client", "a")]).await,
        (3, 2),
        "client a"
    );
    assert_eq!(
        burst(bind, 3, &[("x-client", "b")]).await,
        (3, 0),
        "client b is not limited by a"
    );

    let limited = envoy
        .stat("http_local_rate_limiter.http_local_rate_limit.rate_limited")
        .await;
    assert_eq!(limited, 4 + 1 + 2 + 2, "Envoy counted every 429");
    envoy.assert_no_rejections().await;
    strait.assert_no_nacks();
}
