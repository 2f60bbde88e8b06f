//! `strait tag` as a user runs it: the binary against the in-process fake API server, through
//! a kubeconfig.

use std::path::PathBuf;
use std::process::Output;

use serde_json::json;
use strait_sources::kube::fake::FakeApiServer;

fn kubeconfig(fake: &FakeApiServer) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "strait-tag-cli-{}-{}.yaml",
        std::process::id(),
        fake.url().rsplit(':').next().unwrap_or_default()
    ));
    std::fs::write(&path, fake.kubeconfig("fake")).expect("write kubeconfig");
    path
}

async fn strait(args: &[&str], kubeconfig: &PathBuf) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_strait"));
    cmd.arg("tag")
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env_remove("KUBECONFIG");
    cmd.output().await.expect("run strait")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn set_list_move_and_remove_from_the_command_line() {
    let fake = FakeApiServer::start().await;
    for rev in ["stable", "canary"] {
        fake.apply(json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": format!("strait-sidecar-injector-{rev}"), "labels": {"app": "strait", "istio.io/rev": rev}},
            "webhooks": [{
                "name": "rev.namespace.sidecar-injector.istio.io",
                "admissionReviewVersions": ["v1"], "sideEffects": "None",
                "clientConfig": {"service": {"name": format!("strait-{rev}"), "namespace": "istio-system", "path": "/inject"}},
            }],
        }));
    }
    fake.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"istio.io/rev": "prod"}}}));
    let kc = kubeconfig(&fake);

    let out = strait(&["set", "prod", "--revision", "stable"], &kc).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("tag prod created"),
        "{}",
        text(&out.stdout)
    );

    let out = strait(&["set", "prod", "--revision", "canary"], &kc).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "a move without --overwrite fails"
    );
    assert!(
        text(&out.stderr).contains("already points to revision \"stable\"; pass --overwrite"),
        "{}",
        text(&out.stderr)
    );

    let out = strait(&["set", "prod", "--revision", "canary", "--overwrite"], &kc).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("moved from revision stable to canary"));

    let out = strait(&["list"], &kc).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed = text(&out.stdout);
    assert!(
        listed
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["prod", "canary", "shop", "0"]),
        "{listed}"
    );

    let out = strait(&["remove", "prod"], &kc).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("still in use by namespaces [shop]"),
        "{}",
        text(&out.stderr)
    );

    let out = strait(&["remove", "prod", "--force"], &kc).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = strait(&["list"], &kc).await;
    assert!(!text(&out.stdout).contains("prod"), "{}", text(&out.stdout));
    let _ = std::fs::remove_file(&kc);
}
