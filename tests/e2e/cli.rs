//! The user's path, through the real binary: `strait serve` on a config directory, a stock
//! Envoy started from `strait bootstrap`, requests through it, and `strait proxy-status`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use strait_e2e::mesh::{Endpoint, endpoints, service};
use strait_e2e::{
    Envoy, Killed, Upstream, eventually, free_port, http_client, loopback_ip, strait_bin,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_bootstrap_and_proxy_status() {
    let up = Upstream::start("web-0", loopback_ip().into()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("web.yaml"),
        format!(
            "{}{}",
            service("shop", "web", 8080, "http"),
            endpoints("shop", "web", "http", &[Endpoint::ready(&up)])
        ),
    )
    .expect("write");
    let lo: IpAddr = [127, 0, 0, 1].into();
    let (xds, debug) = (free_port(lo), free_port(lo));
    let _server = Killed(
        Command::new(strait_bin())
            .args(["serve", "--config-dir"])
            .arg(dir.path())
            .args([
                "--xds-addr",
                &xds.to_string(),
                "--debug-addr",
                &debug.to_string(),
                "--webhook-addr",
                "off",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("strait serve starts"),
    );
    let bind: IpAddr = loopback_ip().into();
    let out = Command::new(strait_bin())
        .args(["bootstrap", "--json", "--xds-address", &xds.to_string()])
        .args([
            "--namespace",
            "shop",
            "--pod",
            "client",
            "--outbound-bind",
            &bind.to_string(),
        ])
        .output()
        .expect("strait bootstrap");
    assert!(out.status.success());
    let bootstrap: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bootstrap JSON");
    let envoy = Envoy::start("client", bootstrap).await;

    eventually("request through Envoy", Duration::from_secs(15), || async {
        let r = http_client()
            .get(format!("http://{bind}:8080/"))
            .header("host", "web")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
        if body["server"] == "web-0" {
            Ok(())
        } else {
            Err(body.to_string())
        }
    })
    .await;

    eventually(
        "proxy-status shows the proxy in sync",
        Duration::from_secs(15),
        || async {
            let out = Command::new(strait_bin())
                .args(["proxy-status", "--debug-addr", &debug.to_string()])
                .output()
                .map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let row = text
                .lines()
                .find(|l| l.starts_with("sidecar~"))
                .ok_or_else(|| format!("no proxy row in:\n{text}"))?;
            if row.matches("SYNCED").count() == 4 && row.contains("1.") {
                Ok(())
            } else {
                Err(text)
            }
        },
    )
    .await;
    envoy.assert_no_rejections().await;
}

#[test]
fn bootstrap_is_accepted_by_envoy() {
    for extra in [
        &[][..],
        &[
            "--delta",
            "--outbound-bind",
            "127.0.0.1",
            "--label",
            "app=web",
            "--locality",
            "eu/eu-a",
        ][..],
    ] {
        let out = Command::new(strait_bin())
            .args([
                "bootstrap",
                "--xds-address",
                "strait.istio-system.svc:15010",
            ])
            .args(extra)
            .output()
            .expect("strait bootstrap");
        assert!(out.status.success());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bootstrap.yaml");
        std::fs::write(&path, &out.stdout).expect("write");
        for envoy in strait_e2e::envoy::all_versions() {
            let v = Command::new(&envoy)
                .args([
                    "--mode",
                    "validate",
                    "--disable-hot-restart",
                    "-l",
                    "warning",
                    "-c",
                ])
                .arg(&path)
                .output()
                .expect("envoy");
            assert!(
                v.status.success(),
                "{} refused the bootstrap: {}{}",
                envoy.display(),
                String::from_utf8_lossy(&v.stdout),
                String::from_utf8_lossy(&v.stderr)
            );
        }
    }
}

#[test]
fn validate_reports_invalid_objects_and_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [r]\n  http:\n  - route:\n    - destination: {host: r}\n      weight: -5\n",
    )
    .expect("write");
    let out = Command::new(strait_bin())
        .arg("validate")
        .arg(dir.path())
        .output()
        .expect("validate");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("VirtualService default/r"), "{text}");
    assert!(text.contains("spec.http[0].route[0].weight"), "{text}");
    let ok = Command::new(strait_bin())
        .arg("validate")
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/demo"))
        .output()
        .expect("validate");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
}
