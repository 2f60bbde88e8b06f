//! AdmissionReview v1: reading the API server's request and writing the answer.

use serde::Deserialize;
use serde_json::{Value, json};
use strait_api::k8s_openapi::ByteString;
use strait_inject::patch::Op;

/// What the webhook reads of a request.
#[derive(Debug, Clone)]
pub struct Request {
    /// The request's uid, echoed in the answer.
    pub uid: String,
    /// The namespace of the object.
    pub namespace: String,
    /// `CREATE`, `UPDATE`, …
    pub operation: String,
    /// The kind of the object (`Pod`).
    pub kind: String,
    /// The resource (`pods`) and subresource, if any.
    pub resource: String,
    /// The object.
    pub object: Option<Value>,
    /// The object's name, when it has one yet.
    pub name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    api_version: Option<String>,
    kind: Option<String>,
    request: Option<RawRequest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRequest {
    uid: Option<String>,
    kind: Option<Gvk>,
    resource: Option<Gvr>,
    sub_resource: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    operation: Option<String>,
    object: Option<Value>,
}

#[derive(Deserialize)]
struct Gvk {
    #[serde(default)]
    kind: String,
}

#[derive(Deserialize)]
struct Gvr {
    #[serde(default)]
    resource: String,
}

/// A request that cannot be answered normally: the uid if one could be read, and why.
#[derive(Debug, Clone)]
pub struct Malformed {
    /// The uid, when the body had one.
    pub uid: String,
    /// What is wrong.
    pub message: String,
}

/// Reads an AdmissionReview.
pub fn parse(body: &[u8]) -> Result<Request, Malformed> {
    let bad = |uid: &str, message: String| Malformed {
        uid: uid.to_string(),
        message,
    };
    let review: Review = serde_json::from_slice(body)
        .map_err(|e| bad("", format!("the body is not an AdmissionReview: {e}")))?;
    let api_version = review.api_version.unwrap_or_default();
    if review.kind.as_deref() != Some("AdmissionReview") || api_version != "admission.k8s.io/v1" {
        return Err(bad(
            "",
            format!(
                "expected an admission.k8s.io/v1 AdmissionReview, got {api_version:?} {:?}",
                review.kind.unwrap_or_default()
            ),
        ));
    }
    let r = review
        .request
        .ok_or_else(|| bad("", "the AdmissionReview has no request".into()))?;
    let uid = r
        .uid
        .filter(|u| !u.is_empty())
        .ok_or_else(|| bad("", "the request has no uid".into()))?;
    let mut resource = r.resource.map(|g| g.resource).unwrap_or_default();
    if let Some(sub) = r.sub_resource.filter(|s| !s.is_empty()) {
        resource = format!("{resource}/{sub}");
    }
    Ok(Request {
        uid,
        namespace: r.namespace.unwrap_or_default(),
        operation: r.operation.unwrap_or_default(),
        kind: r.kind.map(|k| k.kind).unwrap_or_default(),
        resource,
        object: r.object,
        name: r.name.unwrap_or_default(),
    })
}

fn review(response: Value) -> Value {
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
}

/// Allowed, unchanged.
pub fn allow(uid: &str) -> Value {
    review(json!({"uid": uid, "allowed": true}))
}

/// Allowed with a JSON Patch.
pub fn patch(uid: &str, ops: &[Op]) -> Result<Value, serde_json::Error> {
    let bytes = serde_json::to_vec(ops)?;
    Ok(review(json!({
        "uid": uid,
        "allowed": true,
        "patchType": "JSONPatch",
        "patch": serde_json::to_value(ByteString(bytes))?,
    })))
}

/// Refused, with a message the user sees in `kubectl` and events.
pub fn deny(uid: &str, code: u16, message: &str) -> Value {
    review(json!({
        "uid": uid,
        "allowed": false,
        "status": {"code": code, "message": message},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_requests_and_says_what_is_wrong() {
        let ok = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "resource": {"group": "", "version": "v1", "resource": "pods"},
                        "namespace": "shop", "operation": "CREATE", "object": {"metadata": {}}}});
        let r = parse(&serde_json::to_vec(&ok).expect("json")).expect("parses");
        assert_eq!(
            (r.uid.as_str(), r.kind.as_str(), r.resource.as_str()),
            ("u1", "Pod", "pods")
        );
        for (body, says) in [
            (b"not json".to_vec(), "not an AdmissionReview"),
            (br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#.to_vec(), "expected an admission.k8s.io/v1"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(), "no request"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}"#.to_vec(), "no uid"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":5}}"#.to_vec(), "not an AdmissionReview"),
        ] {
            let e = parse(&body).expect_err("malformed");
            assert!(e.message.contains(says), "{says}: {}", e.message);
        }
    }

    #[test]
    fn answers() {
        let p = patch("u", &[Op::Remove { path: "/a".into() }]).expect("patch");
        assert_eq!(p["response"]["patchType"], "JSONPatch");
        let b64 = p["response"]["patch"].as_str().expect("base64");
        let bytes: ByteString = serde_json::from_value(json!(b64)).expect("decodes");
        assert_eq!(bytes.0, br#"[{"op":"remove","path":"/a"}]"#);
        assert_eq!(deny("u", 400, "no")["response"]["status"]["message"], "no");
        assert_eq!(allow("u")["response"]["allowed"], true);
    }
}
