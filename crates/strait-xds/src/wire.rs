//! Responses encoded straight from shared, pre-encoded resources.
//!
//! The generated `DiscoveryResponse` owns a copy of every resource; with many proxies
//! receiving the same clusters, those copies dominate memory and CPU. These types write the
//! same wire format from the shared bytes instead: [`SotwResponse::frames`] and
//! [`DeltaResponse::frames`] produce a gRPC message as a list of chunks in which every large
//! resource is the shared buffer itself, so a push to many proxies copies nothing but the
//! small framing, and a connection holds references, not copies, until its peer reads them.
//! They also implement `prost::Message` (a copying encoding of the same bytes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use bytes::{Buf, BufMut, Bytes, BytesMut};
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
        encoding::encode_key(tag, WireType::LengthDelimited, buf);
        encoding::encode_varint(s.len() as u64, buf);
        buf.put_slice(s.as_bytes());
    }
}

/// Where a message is written: small fields into a buffer, shared payloads by reference
/// where the sink can keep them.
trait Sink {
    type Buf: BufMut;
    /// The buffer for small fields.
    fn buf(&mut self) -> &mut Self::Buf;
    /// A shared payload.
    fn shared(&mut self, bytes: &Bytes);
    /// The repeated `resources` field (2) of a response.
    fn resources(&mut self, style: Style, resources: &[Arc<Resource>]) {
        for r in resources {
            put_resource(style, r, self);
        }
    }
}

/// Which response a resources field belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Style {
    /// `Any`s, as state-of-the-world responses carry them.
    Sotw,
    /// `Resource`s with name and version, as incremental responses carry them.
    Delta,
}

fn put_resource(style: Style, r: &Resource, sink: &mut (impl Sink + ?Sized)) {
    match style {
        Style::Sotw => put_bytes(2, &r.any, sink),
        Style::Delta => {
            let version = r.version_string();
            encoding::encode_key(2, WireType::LengthDelimited, sink.buf());
            encoding::encode_varint(delta_resource_len(r) as u64, sink.buf());
            put_string(1, &version, sink.buf());
            put_bytes(2, &r.any, sink);
            put_string(3, &r.name, sink.buf());
        }
    }
}

fn resources_len(style: Style, resources: &[Arc<Resource>]) -> usize {
    resources
        .iter()
        .map(|r| match style {
            Style::Sotw => key_len(2) + ld_len(r.any.len()),
            Style::Delta => key_len(2) + ld_len(delta_resource_len(r)),
        })
        .sum()
}

/// Writes everything into one buffer.
struct Copying<'a, B>(&'a mut B);

impl<B: BufMut> Sink for Copying<'_, B> {
    type Buf = B;
    fn buf(&mut self) -> &mut B {
        self.0
    }
    fn shared(&mut self, bytes: &Bytes) {
        self.0.put_slice(bytes);
    }
}

/// Responses with at least this many resources have their resources field encoded once and
/// shared by every response that carries the same resources (see [`Sections`]).
const SECTION_MIN: usize = 8;

/// The encoded resources fields of recent responses, shared by every stream that sends the
/// same resources: a push of the same clusters or endpoints to a thousand proxies encodes them
/// once and holds them once. A section lives as long as a stream still has it to send.
#[derive(Default)]
pub struct Sections {
    map: Mutex<(SectionMap, usize)>,
    /// The sections built last, held for the proxies that ask for the same resources a little
    /// later (proxies connecting one after another would otherwise each encode them again
    /// once the previous stream has sent its copy), up to [`RECENT_BYTES`].
    recent: Mutex<std::collections::VecDeque<Arc<Vec<u8>>>>,
}

/// Bytes of recently built sections kept alive.
const RECENT_BYTES: usize = 8 << 20;

/// Sections by style and hash of their resources' versions.
type SectionMap = HashMap<(Style, u64), Weak<Vec<u8>>>;

/// A section's bytes, as the owner of a `Bytes`.
struct Section(Arc<Vec<u8>>);

impl AsRef<[u8]> for Section {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Sections {
    fn get(&self, style: Style, resources: &[Arc<Resource>]) -> Bytes {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for r in resources {
            h.update(&r.version.to_le_bytes());
        }
        let key = (style, h.digest());
        let mut guard = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let (map, inserts) = &mut *guard;
        if let Some(v) = map.get(&key).and_then(Weak::upgrade) {
            return Bytes::from_owner(Section(v));
        }
        let mut buf = Vec::with_capacity(resources_len(style, resources));
        let mut sink = Copying(&mut buf);
        for r in resources {
            put_resource(style, r, &mut sink);
        }
        let v = Arc::new(buf);
        map.insert(key, Arc::downgrade(&v));
        *inserts += 1;
        if *inserts >= 256 {
            *inserts = 0;
            map.retain(|_, w| w.strong_count() > 0);
        }
        drop(guard);
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent.push_back(v.clone());
        let mut held: usize = recent.iter().map(|s| s.len()).sum();
        while held > RECENT_BYTES && recent.len() > 1 {
            if let Some(old) = recent.pop_front() {
                held -= old.len();
            }
        }
        Bytes::from_owner(Section(v))
    }
}

/// Payloads below this size are copied into the framing chunks: a chunk of their own would
/// cost more than the copy.
const INLINE_MAX: usize = 1024;

/// A gRPC message as chunks: the 5-byte gRPC header and small fields in freshly written
/// chunks, large payloads as the shared buffers themselves.
struct Frames<'a> {
    out: Vec<Bytes>,
    scratch: BytesMut,
    sections: Option<&'a Sections>,
}

impl<'a> Frames<'a> {
    /// Starts a gRPC message of `len` bytes (uncompressed).
    fn new(len: usize, sections: Option<&'a Sections>) -> Self {
        let mut scratch = BytesMut::with_capacity(len.min(4096) + 5);
        scratch.put_u8(0);
        // A message never nears 4 GiB: Envoy refuses anything above its gRPC limit first.
        scratch.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
        Self {
            out: Vec::new(),
            scratch,
            sections,
        }
    }

    fn flush(&mut self) {
        if !self.scratch.is_empty() {
            self.out.push(self.scratch.split().freeze());
        }
    }

    fn finish(mut self) -> Vec<Bytes> {
        if !self.scratch.is_empty() {
            self.out.push(self.scratch.freeze());
        }
        self.out
    }
}

impl Sink for Frames<'_> {
    type Buf = BytesMut;
    fn buf(&mut self) -> &mut BytesMut {
        &mut self.scratch
    }
    fn shared(&mut self, bytes: &Bytes) {
        if bytes.len() < INLINE_MAX {
            self.scratch.put_slice(bytes);
            return;
        }
        self.flush();
        self.out.push(bytes.clone());
    }
    fn resources(&mut self, style: Style, resources: &[Arc<Resource>]) {
        match self.sections {
            Some(sections) if resources.len() >= SECTION_MIN => {
                let section = sections.get(style, resources);
                self.flush();
                self.out.push(section);
            }
            _ => {
                for r in resources {
                    put_resource(style, r, self);
                }
            }
        }
    }
}

fn put_bytes(tag: u32, bytes: &Bytes, sink: &mut (impl Sink + ?Sized)) {
    encoding::encode_key(tag, WireType::LengthDelimited, sink.buf());
    encoding::encode_varint(bytes.len() as u64, sink.buf());
    sink.shared(bytes);
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

/// Bytes of resource payload (encoded `Any`s) in a response carrying `resources`.
pub(crate) fn payload_len<'a>(resources: impl IntoIterator<Item = &'a Arc<Resource>>) -> usize {
    resources.into_iter().map(|r| r.any.len()).sum()
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

impl SotwResponse {
    fn write(&self, sink: &mut impl Sink) {
        put_string(1, &self.version_info, sink.buf());
        sink.resources(Style::Sotw, &self.resources);
        put_string(4, self.type_url, sink.buf());
        put_string(5, &self.nonce, sink.buf());
        put_control_plane(6, &self.control_plane, sink.buf());
    }

    /// The response as a gRPC message in chunks, sharing the resources' bytes (and, with
    /// `sections`, the whole resources field with other responses carrying the same).
    pub fn frames(&self, sections: Option<&Sections>) -> Vec<Bytes> {
        let mut f = Frames::new(self.encoded_len(), sections);
        self.write(&mut f);
        f.finish()
    }
}

impl Message for SotwResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        self.write(&mut Copying(buf));
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
            + resources_len(Style::Sotw, &self.resources)
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

/// Length of the inner `Resource` message: version (1), resource (2), name (3).
/// A `Resource` message's length (its version string is of fixed length: not formatted to be
/// measured).
fn delta_resource_len(r: &Resource) -> usize {
    key_len(1)
        + ld_len(Resource::VERSION_LEN)
        + key_len(2)
        + ld_len(r.any.len())
        + string_len(3, &r.name)
}

impl DeltaResponse {
    fn write(&self, sink: &mut impl Sink) {
        put_string(1, &self.system_version_info, sink.buf());
        sink.resources(Style::Delta, &self.resources);
        put_string(4, self.type_url, sink.buf());
        put_string(5, &self.nonce, sink.buf());
        for name in &self.removed {
            let buf = sink.buf();
            encoding::encode_key(6, WireType::LengthDelimited, buf);
            encoding::encode_varint(name.len() as u64, buf);
            buf.put_slice(name.as_bytes());
        }
        put_control_plane(7, &self.control_plane, sink.buf());
    }

    /// The response as a gRPC message in chunks, sharing the resources' bytes (and, with
    /// `sections`, the whole resources field with other responses carrying the same).
    pub fn frames(&self, sections: Option<&Sections>) -> Vec<Bytes> {
        let mut f = Frames::new(self.encoded_len(), sections);
        self.write(&mut f);
        f.finish()
    }
}

impl Message for DeltaResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        self.write(&mut Copying(buf));
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
            + resources_len(Style::Delta, &self.resources)
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

    fn joined(frames: &[Bytes]) -> Vec<u8> {
        frames.iter().flat_map(|b| b.iter().copied()).collect()
    }

    /// A large resource of `n` bytes (a cluster with a long name).
    fn big(name: &str, n: usize) -> Arc<Resource> {
        Resource::encode(
            name,
            &Cluster {
                name: format!("{name}{}", "x".repeat(n)),
                ..Default::default()
            },
        )
    }

    #[test]
    fn frames_are_the_grpc_message_and_share_large_resources() {
        let (small, large) = (cluster("a"), big("b", 4000));
        for resources in [
            vec![],
            vec![small.clone()],
            vec![small.clone(), large.clone(), small.clone()],
        ] {
            let resp = SotwResponse {
                version_info: "v1".into(),
                resources,
                type_url: strait_translate::CLUSTER_TYPE,
                nonce: "7".into(),
                control_plane: "strait".into(),
            };
            let frames = resp.frames(None);
            let bytes = joined(&frames);
            assert_eq!(bytes[0], 0, "not compressed");
            let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
            assert_eq!(len, bytes.len() - 5);
            assert_eq!(&bytes[5..], resp.encode_to_vec().as_slice());
            // The large resource travels as its own buffer, not a copy.
            let shared = frames.iter().any(|f| f.as_ptr() == large.any.as_ptr());
            assert_eq!(
                shared,
                resp.resources.iter().any(|r| r.any.len() >= INLINE_MAX)
            );
        }
        let delta = DeltaResponse {
            system_version_info: "s".into(),
            resources: vec![large.clone(), small],
            type_url: strait_translate::CLUSTER_TYPE,
            nonce: "3".into(),
            removed: vec![Arc::from("gone"), Arc::from("")],
            control_plane: "strait".into(),
        };
        let bytes = joined(&delta.frames(None));
        assert_eq!(&bytes[5..], delta.encode_to_vec().as_slice());
        assert_eq!(bytes.len() - 5, delta.encoded_len());
        let d = DeltaDiscoveryResponse::decode(&bytes[5..]).expect("decodes");
        assert_eq!(d.removed_resources, ["gone", ""]);
    }

    #[test]
    fn equal_resources_share_one_section() {
        let sections = Sections::default();
        let rs: Vec<Arc<Resource>> = (0..SECTION_MIN + 2)
            .map(|i| cluster(&format!("c{i}")))
            .collect();
        let resp = |nonce: &str| SotwResponse {
            version_info: "v".into(),
            resources: rs.clone(),
            type_url: strait_translate::CLUSTER_TYPE,
            nonce: nonce.into(),
            control_plane: "strait".into(),
        };
        let (a, b) = (resp("1"), resp("22"));
        let (fa, fb) = (a.frames(Some(&sections)), b.frames(Some(&sections)));
        assert_eq!(joined(&fa)[5..], a.encode_to_vec()[..]);
        assert_eq!(joined(&fb)[5..], b.encode_to_vec()[..]);
        let biggest = |f: &[Bytes]| f.iter().max_by_key(|c| c.len()).map(|c| c.as_ptr());
        assert_eq!(biggest(&fa), biggest(&fb), "one section for both");
        let delta = DeltaResponse {
            resources: rs.clone(),
            type_url: strait_translate::CLUSTER_TYPE,
            nonce: "5".into(),
            ..Default::default()
        };
        assert_eq!(
            joined(&delta.frames(Some(&sections)))[5..],
            delta.encode_to_vec()[..]
        );
        // Fewer resources than a section needs: written in place.
        let small = SotwResponse {
            resources: rs[..2].to_vec(),
            ..resp("3")
        };
        assert_eq!(
            joined(&small.frames(Some(&sections)))[5..],
            small.encode_to_vec()[..]
        );
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
