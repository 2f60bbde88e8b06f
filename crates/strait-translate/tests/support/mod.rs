//! Renders Envoy resources as YAML for golden files, through the descriptor set that ships in
//! the `envoy-types` crate (so `Any` fields are expanded, as in Envoy's config dump).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

/// Finds `types.bin` of the locked `envoy-types` version in Cargo's registry cache.
fn descriptor_path() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).expect("Cargo.lock");
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"envoy-types\""))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_string())
        .expect("envoy-types in Cargo.lock");
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .expect("CARGO_HOME or HOME");
    let src = cargo_home.join("registry/src");
    for index in std::fs::read_dir(&src)
        .expect("cargo registry sources")
        .flatten()
    {
        let candidate = index
            .path()
            .join(format!("envoy-types-{version}/src/generated/types.bin"));
        if candidate.exists() {
            return candidate;
        }
    }
    panic!(
        "envoy-types {version} sources not found under {}",
        src.display()
    );
}

/// The descriptor pool of Envoy's API.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let bytes = std::fs::read(descriptor_path()).expect("envoy-types descriptor set");
        DescriptorPool::decode(bytes.as_slice()).expect("descriptor set decodes")
    })
}

/// One message as a JSON value, by its full protobuf name.
pub fn to_json<M: prost::Message + prost::Name>(m: &M) -> serde_json::Value {
    let desc = pool()
        .get_message_by_name(&M::full_name())
        .unwrap_or_else(|| panic!("{} not in the descriptor set", M::full_name()));
    let dynamic = DynamicMessage::decode(desc, m.encode_to_vec().as_slice()).expect("decodes");
    let opts = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(true)
        .stringify_64_bit_integers(false);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &opts)
        .expect("serialises")
}
