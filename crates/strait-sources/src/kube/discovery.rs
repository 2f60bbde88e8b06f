//! Which resources to watch in a cluster: EndpointSlices if `discovery.k8s.io/v1` serves them
//! (else v1 Endpoints), and each config kind in the preferred version the API server serves:
//! the Istio networking kinds in v1, else v1beta1, else v1alpha3; strait's policy kinds in
//! theirs.

use std::collections::BTreeMap;

use kube::Client;
use kube::core::ApiResource;
use strait_api::Kind;
use strait_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::APIGroup;
use strait_api::object::{ISTIO_NETWORKING_GROUP, ISTIO_NETWORKING_VERSIONS};
use strait_api::policy::{POLICY_GROUP, POLICY_VERSIONS};

/// A group of config kinds (custom resources, which a cluster may or may not serve).
pub(crate) struct ConfigGroup {
    /// The API group.
    pub group: &'static str,
    /// Its versions, most preferred first.
    pub versions: &'static [&'static str],
    /// The kinds strait reads from it.
    pub kinds: &'static [Kind],
}

/// The config kinds strait reads, by group.
pub(crate) const CONFIG_GROUPS: [ConfigGroup; 2] = [
    ConfigGroup {
        group: ISTIO_NETWORKING_GROUP,
        versions: ISTIO_NETWORKING_VERSIONS,
        kinds: &[
            Kind::ServiceEntry,
            Kind::DestinationRule,
            Kind::VirtualService,
            Kind::Gateway,
            Kind::Sidecar,
        ],
    },
    ConfigGroup {
        group: POLICY_GROUP,
        versions: POLICY_VERSIONS,
        kinds: &[Kind::LocalRateLimit],
    },
];

/// Every config kind strait reads.
pub(crate) fn config_kinds() -> impl Iterator<Item = Kind> {
    CONFIG_GROUPS.iter().flat_map(|g| g.kinds.iter().copied())
}

/// What discovery found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Discovered {
    /// `discovery.k8s.io/v1` serves EndpointSlices.
    pub endpoint_slices: bool,
    /// The version each served config kind is watched in.
    pub config: BTreeMap<Kind, String>,
}

/// The plural resource name of a kind the source watches.
pub(crate) fn plural(kind: Kind) -> String {
    match kind {
        Kind::Endpoints => "endpoints".to_string(),
        Kind::ServiceEntry => "serviceentries".to_string(),
        k => format!("{}s", k.as_str().to_ascii_lowercase()),
    }
}

/// The API resource of `kind` in `version`.
pub(crate) fn api_resource(kind: Kind, version: &str) -> ApiResource {
    let group = kind.group();
    ApiResource {
        group: group.to_string(),
        version: version.to_string(),
        api_version: if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.as_str().to_string(),
        plural: plural(kind),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Asks the API server which versions of the config kinds it serves. A group that is not
/// served (its CRDs are not installed) is an empty answer, not an error.
pub(crate) async fn config_versions(
    client: &Client,
) -> Result<BTreeMap<Kind, String>, kube::Error> {
    let mut out = BTreeMap::new();
    for g in &CONFIG_GROUPS {
        let req = http::Request::get(format!("/apis/{}", g.group))
            .body(Vec::new())
            .map_err(kube::Error::HttpError)?;
        let group: APIGroup = match client.request(req).await {
            Ok(group) => group,
            Err(e) if is_not_found(&e) => continue,
            Err(e) => return Err(e),
        };
        for version in g.versions {
            if !group.versions.iter().any(|v| v.version == *version) {
                continue;
            }
            let list = match client
                .list_api_group_resources(&format!("{}/{version}", g.group))
                .await
            {
                Ok(l) => l,
                Err(e) if is_not_found(&e) => continue,
                Err(e) => return Err(e),
            };
            for kind in g.kinds {
                if list.resources.iter().any(|r| r.name == plural(*kind)) {
                    out.entry(*kind).or_insert_with(|| (*version).to_string());
                }
            }
        }
    }
    Ok(out)
}

/// Discovers what to watch.
pub(crate) async fn discover(client: &Client) -> Result<Discovered, kube::Error> {
    let endpoint_slices = match client.list_api_group_resources("discovery.k8s.io/v1").await {
        Ok(list) => list
            .resources
            .iter()
            .any(|r| r.name == plural(Kind::EndpointSlice)),
        Err(e) if is_not_found(&e) => false,
        Err(e) => return Err(e),
    };
    Ok(Discovered {
        endpoint_slices,
        config: config_versions(client).await?,
    })
}
