//! State-of-the-world requests, decoded lazily.
//!
//! A state-of-the-world EDS or RDS request (and every ACK of one) lists every name the proxy
//! subscribes to: with a thousand services, a hundred kilobytes per ACK, for every proxy, at
//! every push. Almost always the list is the one the proxy sent last time. So names are not
//! turned into strings here: the request keeps its bytes, records where the names lie and
//! hashes those bytes ([`NameList`]); the stream looks at the names only when the hash
//! differs. Given where the stream's last lists lay, decoding checks the same place first and
//! hashes it instead of stepping over every name. Sets of names are shared between the proxies
//! that subscribe to the same ones ([`NameSets`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;

/// Why a request could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A nested message did not decode.
    #[error(transparent)]
    Prost(#[from] prost::DecodeError),
    /// The bytes are not a well-formed message.
    #[error("{0}")]
    Malformed(String),
}

impl DecodeError {
    fn new(why: impl Into<String>) -> Self {
        DecodeError::Malformed(why.into())
    }
}

/// An `envoy.service.discovery.v3.DiscoveryRequest` whose `resource_names` stay in the
/// request's bytes.
#[derive(Debug, Default)]
pub struct SotwRequest {
    /// version_info (1).
    pub version_info: String,
    /// node (2).
    pub node: Option<Node>,
    /// type_url (4).
    pub type_url: String,
    /// response_nonce (5).
    pub response_nonce: String,
    /// error_detail (6).
    pub error_detail: Option<RpcStatus>,
    buf: Bytes,
    list: NameList,
}

/// Where a request's names lie and what their bytes hash to. Compared with the next request's
/// to tell an unchanged list, and handed to the next decode as a hint: a list found again at
/// the same place is recognised by one hash of its bytes, without stepping over each name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NameList {
    /// From the first `resource_names` field (its key) to the end of the last one. Other
    /// fields may lie in between: the names are found by walking the span again.
    span: (u32, u32),
    count: u32,
    /// xxh3 of the span's bytes (0 when there are no names).
    fingerprint: u64,
}

impl NameList {
    /// True when both list the same names in the same order (equal hashes are taken to mean
    /// equal lists).
    pub fn same_names(&self, other: &NameList) -> bool {
        self.fingerprint == other.fingerprint && self.count == other.count
    }

    /// How many names.
    pub fn count(&self) -> usize {
        self.count as usize
    }
}

/// The key of a `resource_names` field (3, length-delimited).
const NAME_KEY: u8 = 3 << 3 | 2;

#[inline]
fn varint(b: &[u8], pos: &mut usize) -> Result<u64, DecodeError> {
    // One byte: every key here and the length of almost every name.
    if let Some(&x) = b.get(*pos)
        && x < 0x80
    {
        *pos += 1;
        return Ok(u64::from(x));
    }
    let mut s = b.get(*pos..).unwrap_or_default();
    let before = s.len();
    let v = prost::encoding::decode_varint(&mut s)?;
    *pos += before - s.len();
    Ok(v)
}

fn text(slice: &[u8]) -> Result<&str, DecodeError> {
    std::str::from_utf8(slice).map_err(|_| DecodeError::new("invalid UTF-8 in a string field"))
}

/// The end of the length-delimited value whose length is at `pos`; `pos` moves to the value.
#[inline]
fn delimited(b: &[u8], pos: &mut usize) -> Result<usize, DecodeError> {
    let len = usize::try_from(varint(b, pos)?).map_err(|_| DecodeError::new("length overflows"))?;
    pos.checked_add(len)
        .filter(|e| *e <= b.len())
        .ok_or_else(|| DecodeError::new("field runs past the message"))
}

/// The field at `pos`: its tag and, when length-delimited, its value. `pos` moves past it.
fn field<'a>(b: &'a [u8], pos: &mut usize) -> Result<(u64, Option<&'a [u8]>), DecodeError> {
    let key = varint(b, pos)?;
    let value = match key & 7 {
        0 => {
            varint(b, pos)?;
            None
        }
        1 => {
            *pos += 8;
            None
        }
        5 => {
            *pos += 4;
            None
        }
        2 => {
            let end = delimited(b, pos)?;
            let value = &b[*pos..end];
            *pos = end;
            Some(value)
        }
        w => return Err(DecodeError::new(format!("unsupported wire type {w}"))),
    };
    if *pos > b.len() {
        return Err(DecodeError::new("field runs past the message"));
    }
    Ok((key >> 3, value))
}

/// The hint whose list lies at `pos` in `b`, byte for byte. Each hash taken is left in
/// `hashed`, with the bytes it covers.
fn hint_at<'h>(
    b: &[u8],
    pos: usize,
    hints: &'h [NameList],
    hashed: &mut Option<((usize, usize), u64)>,
) -> Option<&'h NameList> {
    hints.iter().find(|h| {
        let end = h.span.1 as usize;
        if h.count == 0
            || h.span.0 as usize != pos
            || end > b.len()
            || b.get(end) == Some(&NAME_KEY)
        {
            return false;
        }
        let fp = xxhash_rust::xxh3::xxh3_64(&b[pos..end]);
        *hashed = Some(((pos, end), fp));
        fp == h.fingerprint
    })
}

/// The hash of a name in a set: sets hash to the wrapping sum of their names' hashes, so the
/// order a proxy lists them in does not matter. 128 bits: equal hashes are taken to mean
/// equal sets.
fn name_hash(name: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(name)
}

impl SotwRequest {
    /// Decodes a request. Names are only stepped over, in a loop of their own: an ACK may
    /// list thousands.
    pub fn decode(buf: Bytes) -> Result<Self, DecodeError> {
        Self::decode_hinted(buf, &[])
    }

    /// Decodes a request whose names may be one of `hints` (the lists of the stream's last
    /// requests), found again at the same place: then they are hashed, not stepped over.
    pub fn decode_hinted(buf: Bytes, hints: &[NameList]) -> Result<Self, DecodeError> {
        let mut out = SotwRequest::default();
        let b = &buf[..];
        let mut span: Option<(usize, usize)> = None;
        let mut count = 0u32;
        // A hash already taken, and of which bytes.
        let mut hashed: Option<((usize, usize), u64)> = None;
        let mut pos = 0usize;
        while pos < b.len() {
            if b[pos] == NAME_KEY {
                let first = pos;
                if span.is_none()
                    && let Some(h) = hint_at(b, pos, hints, &mut hashed)
                {
                    // The same bytes as a list walked before: the same names.
                    count = h.count;
                    pos = h.span.1 as usize;
                }
                while b.get(pos) == Some(&NAME_KEY) {
                    pos += 1;
                    pos = delimited(b, &mut pos)?;
                    count += 1;
                }
                span = Some((span.map_or(first, |(s, _)| s), pos));
                continue;
            }
            let (tag, value) = field(b, &mut pos)?;
            let Some(v) = value else { continue };
            match tag {
                1 => out.version_info = text(v)?.to_string(),
                2 => out.node = Some(Node::decode(v)?),
                4 => out.type_url = text(v)?.to_string(),
                5 => out.response_nonce = text(v)?.to_string(),
                6 => out.error_detail = Some(RpcStatus::decode(v)?),
                _ => {}
            }
        }
        if let Some((start, end)) = span {
            let fingerprint = match hashed {
                Some((at, fp)) if at == (start, end) => fp,
                _ => xxhash_rust::xxh3::xxh3_64(&b[start..end]),
            };
            // Offsets fit: requests are limited far below 4 GiB.
            out.list = NameList {
                span: (start as u32, end as u32),
                count,
                fingerprint,
            };
        }
        out.buf = buf;
        Ok(out)
    }

    /// Each name's bytes, in the order listed.
    fn each_name<'a>(
        &'a self,
        mut f: impl FnMut(&'a [u8]) -> Result<(), DecodeError>,
    ) -> Result<(), DecodeError> {
        let (start, end) = self.list.span;
        let b = &self.buf[start as usize..end as usize];
        let mut pos = 0;
        while pos < b.len() {
            if let (3, Some(name)) = field(b, &mut pos)? {
                f(name)?;
            }
        }
        Ok(())
    }

    /// The subscribed names, as the proxy listed them.
    pub fn names(&self) -> Result<Vec<&str>, DecodeError> {
        let mut out = Vec::with_capacity(self.list.count());
        self.each_name(|n| {
            out.push(text(n)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// A hash of the set of names, whatever their order.
    pub fn names_hash(&self) -> u128 {
        let mut h = 0u128;
        // The span was walked by `decode`: it cannot fail now.
        let _ = self.each_name(|n| {
            h = h.wrapping_add(name_hash(n));
            Ok(())
        });
        h
    }

    /// Where the names lie, and a hash of them exactly as listed (order included): a proxy
    /// that repeats its last list (every ACK in the state of the world) is recognised by it.
    pub fn list(&self) -> NameList {
        self.list
    }
}

/// A set of resource names, sorted, shared by every proxy subscribed to exactly these.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NameSet {
    names: Box<[Arc<str>]>,
    hash: u128,
}

impl NameSet {
    /// True when `name` is in the set.
    pub fn contains(&self, name: &str) -> bool {
        self.names.binary_search_by(|n| (**n).cmp(name)).is_ok()
    }

    /// The names, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<str>> {
        self.names.iter()
    }

    /// How many names.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The set's hash (see [`SotwRequest::names_hash`]).
    pub fn hash(&self) -> u128 {
        self.hash
    }
}

/// Interns name sets: proxies that subscribe to the same names share one set.
#[derive(Default)]
pub struct NameSets {
    sets: Mutex<(HashMap<u128, Weak<NameSet>>, usize)>,
    /// Names in one set and not in another, by the two sets' hashes: thousands of proxies
    /// move from the same set to the same next one.
    added: Mutex<AddedCache>,
}

/// Set differences by (from, to) set hash.
type AddedCache = HashMap<(u128, u128), Arc<[Arc<str>]>>;

/// Remembered set differences kept at most.
const ADDED_KEPT: usize = 64;

impl NameSets {
    /// The live set with this hash, if another proxy subscribed to it.
    pub fn find(&self, hash: u128) -> Option<Arc<NameSet>> {
        let guard = self.sets.lock().unwrap_or_else(PoisonError::into_inner);
        guard.0.get(&hash).and_then(Weak::upgrade)
    }

    /// The shared set of `names`.
    pub fn intern(&self, mut names: Vec<Arc<str>>) -> Arc<NameSet> {
        names.sort();
        names.dedup();
        let hash = names
            .iter()
            .fold(0u128, |h, n| h.wrapping_add(name_hash(n.as_bytes())));
        let mut guard = self.sets.lock().unwrap_or_else(PoisonError::into_inner);
        let (sets, inserts) = &mut *guard;
        if let Some(existing) = sets.get(&hash).and_then(Weak::upgrade) {
            return existing;
        }
        let set = Arc::new(NameSet {
            names: names.into_boxed_slice(),
            hash,
        });
        sets.insert(hash, Arc::downgrade(&set));
        *inserts += 1;
        if *inserts >= 1024 {
            *inserts = 0;
            sets.retain(|_, w| w.strong_count() > 0);
        }
        set
    }

    /// The shared set of `base` plus `added` (none of them in `base`, no duplicates) minus
    /// `removed` (all of them in `base`). When thousands of proxies holding one set subscribe
    /// to the same new names (a new service's load assignments), the first builds the new
    /// set and the others find it by its hash, which follows from `base`'s without looking
    /// at its names.
    /// `make` turns a new name into the shared string the set holds; it is called only when
    /// no proxy holds the resulting set yet.
    pub fn change(
        &self,
        base: &NameSet,
        added: &[&str],
        removed: &HashSet<&str>,
        make: impl Fn(&str) -> Arc<str>,
    ) -> Arc<NameSet> {
        let hash = added
            .iter()
            .fold(base.hash, |h, n| h.wrapping_add(name_hash(n.as_bytes())));
        let hash = removed
            .iter()
            .fold(hash, |h, n| h.wrapping_sub(name_hash(n.as_bytes())));
        if let Some(existing) = self.find(hash) {
            return existing;
        }
        let names: Vec<Arc<str>> = base
            .names
            .iter()
            .filter(|n| !removed.contains(&***n))
            .cloned()
            .chain(added.iter().map(|n| make(n)))
            .collect();
        self.intern(names)
    }

    /// The names of `new` that `old` lacks, in order.
    pub fn added(&self, old: &NameSet, new: &NameSet) -> Arc<[Arc<str>]> {
        let key = (old.hash, new.hash);
        if let Some(found) = self
            .added
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return found.clone();
        }
        // Both sorted: one walk.
        let mut out = Vec::new();
        let mut olds = old.names.iter().peekable();
        for n in new.names.iter() {
            while olds.next_if(|o| ***o < **n).is_some() {}
            if olds.next_if(|o| Arc::ptr_eq(o, n) || ***o == **n).is_none() {
                out.push(n.clone());
            }
        }
        let out: Arc<[Arc<str>]> = out.into();
        let mut cache = self.added.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= ADDED_KEPT {
            cache.clear();
        }
        cache.insert(key, out.clone());
        out
    }

    /// How many sets are alive.
    #[cfg(test)]
    fn live(&self) -> usize {
        let guard = self.sets.lock().unwrap_or_else(PoisonError::into_inner);
        guard.0.values().filter(|w| w.strong_count() > 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

    fn request(names: &[&str]) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: "v7".into(),
            node: Some(Node {
                id: "sidecar~10.0.0.1~a.ns~ns.svc.cluster.local".into(),
                ..Default::default()
            }),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            type_url: "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment".into(),
            response_nonce: "3".into(),
            error_detail: Some(RpcStatus {
                code: 13,
                message: "bad".into(),
                details: vec![],
            }),
            ..Default::default()
        }
    }

    fn decoded(names: &[&str]) -> SotwRequest {
        SotwRequest::decode(Bytes::from(request(names).encode_to_vec())).expect("decodes")
    }

    #[test]
    fn decodes_like_the_generated_type() {
        let full = request(&["outbound|80||a", "outbound|80||b"]);
        let r = SotwRequest::decode(Bytes::from(full.encode_to_vec())).expect("decodes");
        assert_eq!(r.version_info, "v7");
        assert_eq!(r.node, full.node);
        assert_eq!(r.type_url, full.type_url);
        assert_eq!(r.response_nonce, "3");
        assert_eq!(r.error_detail, full.error_detail);
        assert_eq!(
            r.names().expect("utf-8"),
            ["outbound|80||a", "outbound|80||b"]
        );
    }

    #[test]
    fn names_may_come_in_several_runs_and_be_long() {
        let long = "x".repeat(300);
        let mut buf = Vec::new();
        let put = |buf: &mut Vec<u8>, tag: u32, v: &str| {
            prost::encoding::string::encode(tag, &v.to_string(), buf)
        };
        put(&mut buf, 3, "a");
        put(&mut buf, 4, "type");
        put(&mut buf, 3, &long);
        put(&mut buf, 5, "n1");
        put(&mut buf, 3, "c");
        let r = SotwRequest::decode(Bytes::from(buf)).expect("decodes");
        assert_eq!(r.type_url, "type");
        assert_eq!(r.response_nonce, "n1");
        assert_eq!(r.names().expect("utf-8"), ["a", long.as_str(), "c"]);
        assert_eq!(r.list().count(), 3);
        assert_eq!(r.names_hash(), decoded(&["c", &long, "a"]).names_hash());
    }

    #[test]
    fn the_fingerprint_sees_order_and_content() {
        let f = |names: &[&str]| decoded(names).list();
        assert!(f(&["a", "b", "c"]).same_names(&f(&["a", "b", "c"])));
        assert!(!f(&["a", "b", "c"]).same_names(&f(&["c", "a", "b"])));
        assert!(!f(&["a", "b"]).same_names(&f(&["a", "bb"])));
        assert!(!f(&["ab"]).same_names(&f(&["a", "b"])));
        assert_eq!(f(&[]), NameList::default());
    }

    #[test]
    fn a_hint_recognises_the_same_list_and_is_checked() {
        let names: Vec<String> = (0..300).map(|i| format!("outbound|80||s{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let walked = decoded(&refs).list();
        let encode = |version: &str, names: &[&str], nonce: &str| {
            let mut r = request(names);
            r.version_info = version.into();
            r.node = None;
            r.response_nonce = nonce.into();
            Bytes::from(r.encode_to_vec())
        };
        let again = |buf: Bytes, hints: &[NameList]| {
            SotwRequest::decode_hinted(buf, hints).expect("decodes")
        };
        // Where the proxy's last request put them: found by hashing.
        let first = SotwRequest::decode(encode("v1", &refs, "1")).expect("decodes");
        let hinted = again(
            encode("v2", &refs, "22"),
            &[NameList::default(), first.list()],
        );
        assert!(hinted.list().same_names(&walked));
        assert_eq!(hinted.list(), first.list());
        assert_eq!(hinted.response_nonce, "22");
        assert_eq!(hinted.names().expect("utf-8").len(), 300);
        // Same length, one name changed: the hash differs and the names are walked.
        let mut changed = refs.clone();
        changed[7] = "outbound|80||sX";
        let other = again(encode("v2", &changed, "3"), &[first.list()]);
        assert!(!other.list().same_names(&first.list()));
        assert_eq!(other.list().count(), 300);
        assert_eq!(other.names().expect("utf-8")[7], "outbound|80||sX");
        // A longer list, or one further along, does not match the hint's place.
        let mut more = refs.clone();
        more.push("outbound|80||extra");
        let longer = again(encode("v2", &more, "3"), &[first.list()]);
        assert_eq!(longer.list().count(), 301);
        let shifted = again(encode("v10", &refs, "3"), &[first.list()]);
        assert!(shifted.list().same_names(&first.list()));
        assert_ne!(shifted.list(), first.list());
        // A broken message is still refused whatever the hint.
        let mut bad = encode("v1", &refs, "1").to_vec();
        bad.truncate(bad.len() - 1);
        assert!(SotwRequest::decode_hinted(Bytes::from(bad), &[first.list()]).is_err());
    }

    #[test]
    fn added_names_are_a_walk_of_both_sets() {
        let sets = NameSets::default();
        let set = |v: &[&str]| sets.intern(v.iter().map(|n| Arc::from(*n)).collect());
        let old = set(&["b", "d", "f"]);
        let new = set(&["a", "b", "c", "f", "g"]);
        let added = sets.added(&old, &new);
        assert_eq!(
            added.iter().map(|n| &**n).collect::<Vec<_>>(),
            ["a", "c", "g"]
        );
        // The next proxy making the same move gets the same answer without a walk.
        assert!(Arc::ptr_eq(&added, &sets.added(&old, &new)));
        assert!(sets.added(&new, &new).is_empty());
        assert_eq!(sets.added(&new, &old).len(), 1);
    }

    #[test]
    fn the_hash_ignores_order_and_sees_changes() {
        let h = |names: &[&str]| decoded(names).names_hash();
        assert_eq!(h(&["a", "b", "c"]), h(&["c", "a", "b"]));
        assert_ne!(h(&["a", "b", "c"]), h(&["a", "b"]));
        assert_ne!(h(&["a", "b"]), h(&["a", "x"]));
        let sets = NameSets::default();
        let set = sets.intern(vec![Arc::from("c"), Arc::from("a"), Arc::from("b")]);
        assert_eq!(set.hash(), h(&["a", "b", "c"]));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &[0x0a, 0x05, b'a'][..],
            &[0x0a, 0x02, 0xff, 0xfe],
            &[0x0b],
            &[0xff; 12],
        ] {
            assert!(
                SotwRequest::decode(Bytes::copy_from_slice(bad)).is_err(),
                "{bad:?}"
            );
        }
        // A name that is not UTF-8 is refused when looked at.
        let r = SotwRequest::decode(Bytes::copy_from_slice(&[0x1a, 0x02, 0xff, 0xfe]))
            .expect("decodes");
        assert!(r.names().is_err());
    }

    #[test]
    fn equal_sets_are_shared() {
        let sets = NameSets::default();
        let a = sets.intern(vec![Arc::from("x"), Arc::from("y")]);
        let b = sets.intern(vec![Arc::from("y"), Arc::from("x")]);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(sets.find(a.hash()).is_some_and(|f| Arc::ptr_eq(&f, &a)));
        assert!(a.contains("x") && !a.contains("z"));
        let c = sets.intern(vec![Arc::from("x")]);
        assert!(!Arc::ptr_eq(&a, &c));
        drop((a, b));
        assert_eq!(sets.live(), 1);
    }

    #[test]
    fn changed_sets_are_the_interned_ones() {
        let sets = NameSets::default();
        let names = |v: &[&str]| v.iter().map(|n| Arc::from(*n)).collect::<Vec<Arc<str>>>();
        let base = sets.intern(names(&["a", "b", "c"]));
        let gone: HashSet<&str> = ["b"].into_iter().collect();
        let changed = sets.change(&base, &["d"], &gone, |n| Arc::from(n));
        assert_eq!(
            changed.iter().map(|n| &**n).collect::<Vec<_>>(),
            ["a", "c", "d"]
        );
        // The same change from another proxy holding the same set shares the result, and it
        // is the set a proxy listing those names outright gets.
        assert!(Arc::ptr_eq(
            &sets.change(&base, &["d"], &gone, |_| unreachable!("found by its hash")),
            &changed
        ));
        assert!(Arc::ptr_eq(&sets.intern(names(&["d", "c", "a"])), &changed));
        // Back to where it started.
        let back = sets.change(&changed, &["b"], &["d"].into_iter().collect(), |n| {
            Arc::from(n)
        });
        assert!(Arc::ptr_eq(&back, &base));
    }
}
