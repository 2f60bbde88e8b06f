//! Responses encoded straight from shared, pre-encoded resources.
//!
//! The generated `DiscoveryResponse` owns a copy of every resource; with many proxies
//! receiving the same clusters, those copies dominate memory and CPU. These types implement
//! `prost::Message` by writing the same wire format from `Arc`ed bytes, so a push copies each
//! resource exactly once: into the connection's send buffer.

use std::sync::Arc;

use bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};

use crate::resource::Resource;

fn ld_len(len: usize) -> usize {
    encoding::encoded_len_varint(len as u64) + len
}

fn key_len(tag: u32) -> usize {
    encoding::key_len(tag)
}

fn string_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        key_len(tag) + ld_len(s.len())
    }
}

fn put_string(tag: u32, s: &str, buf: &mut impl BufMut) {
    if !s.is_empty() {
        encoding::string::encode(tag, &s.to_string(), buf);
    }
}

fn put_bytes(tag: u32, bytes: &[u8], buf: &mut impl BufMut) {
    encoding::encode_key(tag, WireType::LengthDelimited, buf);
    encoding::encode_varint(bytes.len() as u64, buf);
    buf.put_slice(bytes);
}

/// `envoy.service.discovery.v3.DiscoveryResponse`, state of the world.
#[derive(Debug, Default, Clone)]
pub struct SotwResponse {
    /// version_info (1).
    pub version_info: String,
    /// resources (2): complete `Any` encodings.
    pub resources: Vec<Arc<Resource>>,
    /// type_url (4).
    pub type_url: &'static str,
    /// nonce (5).
    pub nonce: String,
    /// control_plane.identifier (6.1).
    pub control_plane: Arc<str>,
}

impl SotwResponse {
    /// Bytes of resource payload in this response.
    pub fn payload_len(&self) -> usize {
        self.resources.iter().map(|r| r.any.len()).sum()
    }
}

fn control_plane_len(id: &str) -> usize {
    if id.is_empty() {
        0
    } else {
        let inner = string_len(1, id);
        key_len(6) + ld_len(inner)
    }
}

fn put_control_plane(tag: u32, id: &str, buf: &mut impl BufMut) {
    if id.is_empty() {
        return;
    }
    encoding::encode_key(tag, WireType::LengthDelimited, buf);
    encoding::encode_varint(string_len(1, id) as u64, buf);
    put_string(1, id, buf);
}

impl Message for SotwResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        put_string(1, &self.version_info, buf);
        for r in &self.resources {
            put_bytes(2, &r.any, buf);
        }
        put_string(4, self.type_url, buf);
        put_string(5, &self.nonce, buf);
        put_control_plane(6, &self.control_plane, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        // Only ever encoded by the server.
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        string_len(1, &self.version_info)
            + self
                .resources
                .iter()
                .map(|r| key_len(2) + ld_len(r.any.len()))
                .sum::<usize>()
            + string_len(4, self.type_url)
            + string_len(5, &self.nonce)
            + control_plane_len(&self.control_plane)
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// `envoy.service.discovery.v3.DeltaDiscoveryResponse`, incremental.
#[derive(Debug, Default, Clone)]
pub struct DeltaResponse {
    /// system_version_info (1).
    pub system_version_info: String,
    /// resources (2), each wrapped in a `Resource` with name and version.
    pub resources: Vec<Arc<Resource>>,
    /// type_url (4).
    pub type_url: &'static str,
    /// nonce (5).
    pub nonce: String,
    /// removed_resources (6).
    pub removed: Vec<Arc<str>>,
    /// control_plane.identifier (7.1).
    pub control_plane: Arc<str>,
}

impl DeltaResponse {
    /// Bytes of resource payload in this response.
    pub fn payload_len(&self) -> usize {
        self.resources.iter().map(|r| r.any.len()).sum()
    }
}

/// Length of the inner `Resource` message: version (1), resource (2), name (3).
fn delta_resource_len(r: &Resource, version: &str) -> usize {
    string_len(1, version) + key_len(2) + ld_len(r.any.len()) + string_len(3, &r.name)
}

impl Message for DeltaResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        put_string(1, &self.system_version_info, buf);
        for r in &self.resources {
            let version = r.version_string();
            encoding::encode_key(2, WireType::LengthDelimited, buf);
            encoding::encode_varint(delta_resource_len(r, &version) as u64, buf);
            put_string(1, &version, buf);
            put_bytes(2, &r.any, buf);
            put_string(3, &r.name, buf);
        }
        put_string(4, self.type_url, buf);
        put_string(5, &self.nonce, buf);
        for name in &self.removed {
            encoding::encode_key(6, WireType::LengthDelimited, buf);
            encoding::encode_varint(name.len() as u64, buf);
            buf.put_slice(name.as_bytes());
        }
        put_control_plane(7, &self.control_plane, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        string_len(1, &self.system_version_info)
            + self
                .resources
                .iter()
                .map(|r| key_len(2) + ld_len(delta_resource_len(r, &r.version_string())))
                .sum::<usize>()
            + string_len(4, self.type_url)
            + string_len(5, &self.nonce)
            + self
                .removed
                .iter()
                .map(|n| key_len(6) + ld_len(n.len()))
                .sum::<usize>()
            + control_plane_len(&self.control_plane)
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryResponse, DiscoveryResponse,
    };

    fn cluster(name: &str) -> Arc<Resource> {
        Resource::encode(
            name,
            &Cluster {
                name: name.to_string(),
                ..Default::default()
            },
        )
    }

    #[test]
    fn sotw_decodes_as_the_generated_type() {
        let resp = SotwResponse {
            version_info: "v1".into(),
            resources: vec![cluster("a"), cluster("b")],
            type_url: strait_translate::CLUSTER_TYPE,
            nonce: "7".into(),
            control_plane: "strait".into(),
        };
        let bytes = resp.encode_to_vec();
        assert_eq!(bytes.len(), resp.encoded_len());
        let d = DiscoveryResponse::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(d.version_info, "v1");
        assert_eq!(d.nonce, "7");
        assert_eq!(d.type_url, strait_translate::CLUSTER_TYPE);
        assert_eq!(
            d.control_plane.map(|c| c.identifier).as_deref(),
            Some("strait")
        );
        let names: Vec<String> = d
            .resources
            .iter()
            .map(|a| Cluster::decode(a.value.as_slice()).expect("cluster").name)
            .collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn delta_decodes_as_the_generated_type() {
        let a = cluster("a");
        let resp = DeltaResponse {
            system_version_info: "sys".into(),
            resources: vec![a.clone()],
            type_url: strait_translate::CLUSTER_TYPE,
            nonce: "9".into(),
            removed: vec![Arc::from("gone")],
            control_plane: "strait".into(),
        };
        let bytes = resp.encode_to_vec();
        assert_eq!(bytes.len(), resp.encoded_len());
        let d = DeltaDiscoveryResponse::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(d.nonce, "9");
        assert_eq!(d.removed_resources, ["gone"]);
        assert_eq!(d.resources.len(), 1);
        assert_eq!(d.resources[0].name, "a");
        assert_eq!(d.resources[0].version, a.version_string());
        let c = Cluster::decode(
            d.resources[0]
                .resource
                .as_ref()
                .expect("any")
                .value
                .as_slice(),
        )
        .expect("cluster");
        assert_eq!(c.name, "a");
    }
}
