//! One log record: its frame and the entry inside it. Pure byte work, no IO.
//!
//! ```text
//! frame   := length: u32 LE | checksum: u32 LE | payload: [u8; length]
//! checksum = crc32c(length as 4 LE bytes ++ payload)
//! payload := record_type: u8 | body
//!   record_type 1 (entry):
//!     body := term: u64 LE | index: u64 LE | kind: u8 | command? | configuration?
//!     kind 0 = Noop (no more bytes), kind 1 = Command: command := data_bytes: u32 LE | data
//!     kind 2 = Config: configuration := voters | voters_outgoing | learners | addresses?
//!       set := count: u8 | count × node id: u64 LE, ids ascending
//!       addresses := count: u8 (≥ 1) | count × (node id: u64 LE | length: u8 | UTF-8 bytes),
//!         ids ascending; absent when no member's address is known (as written before
//!         configurations carried addresses, which therefore still read)
//! ```
//!
//! The payload must be consumed exactly; `length` is at least `PAYLOAD_BYTES_MIN`.
//! The encoding is written by hand (not derived) so that a change to `keel_core::Entry`
//! cannot silently change the bytes on disk: a new `EntryKind` fails to compile here.

use keel_core::{Entry, EntryKind, LogIndex, Membership, NodeId, Term};
use std::collections::{BTreeMap, BTreeSet};

pub const FRAME_HEADER_BYTES: usize = 8;
/// record type + term + index + kind.
pub const PAYLOAD_BYTES_MIN: usize = 1 + 8 + 8 + 1;

const RECORD_TYPE_ENTRY: u8 = 1;
const KIND_NOOP: u8 = 0;
const KIND_COMMAND: u8 = 1;
const KIND_CONFIG: u8 = 2;

/// What the bytes at one offset hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A whole, checksummed entry, `frame_bytes` long.
    Entry { entry: Entry, frame_bytes: usize },
    /// The header or the payload its length names runs past the end of the bytes.
    Short,
    /// `length` is outside `PAYLOAD_BYTES_MIN..=payload_bytes_max`.
    BadLength { length: u32 },
    /// The checksum does not match; the frame would be `frame_bytes` long.
    BadChecksum { frame_bytes: usize },
    /// The checksum matches but the payload is not an entry this version understands.
    BadPayload { reason: String },
}

/// The bytes a frame for `entry` takes.
pub fn frame_bytes(entry: &Entry) -> usize {
    FRAME_HEADER_BYTES + payload_bytes(entry)
}

fn payload_bytes(entry: &Entry) -> usize {
    match &entry.kind {
        EntryKind::Noop => PAYLOAD_BYTES_MIN,
        EntryKind::Command(data) => PAYLOAD_BYTES_MIN + 4 + data.len(),
        EntryKind::Config(membership) => PAYLOAD_BYTES_MIN + membership_bytes(membership),
    }
}

/// The bytes `encode_membership` writes for `membership`.
pub fn membership_bytes(membership: &Membership) -> usize {
    let sets = 3 + 8 * (membership.voters.len() + membership.voters_outgoing.len() + membership.learners.len());
    let addresses = if membership.addresses.is_empty() { 0 } else { 1 + membership.addresses.values().map(|address| 9 + address.len()).sum::<usize>() };
    sets + addresses
}

/// The most bytes any encoded configuration takes (each count is one byte): a bound to
/// check a length read from disk against before allocating for it.
pub fn membership_bytes_max() -> usize {
    3 + 8 * 3 * 255 + 1 + 255 * (9 + 255)
}

/// A configuration, in the encoding of the module doc (also the snapshot file's).
pub fn encode_membership(membership: &Membership, out: &mut Vec<u8>) {
    for set in [&membership.voters, &membership.voters_outgoing, &membership.learners] {
        out.push(u8::try_from(set.len()).expect("a configuration holds at most MEMBERS_MAX members"));
        for id in set {
            out.extend_from_slice(&id.0.to_le_bytes());
        }
    }
    if membership.addresses.is_empty() {
        return;
    }
    out.push(u8::try_from(membership.addresses.len()).expect("a configuration holds at most MEMBERS_MAX members"));
    for (id, address) in &membership.addresses {
        out.extend_from_slice(&id.0.to_le_bytes());
        out.push(u8::try_from(address.len()).expect("addresses are at most ADDRESS_BYTES_MAX bytes"));
        out.extend_from_slice(address.as_bytes());
    }
}

/// Reads a configuration from the start of `bytes`; returns it and the bytes it took.
pub fn decode_membership(bytes: &[u8]) -> Result<(Membership, usize), String> {
    let mut at = 0;
    let mut sets: Vec<BTreeSet<NodeId>> = Vec::new();
    for _ in 0..3 {
        let count = *bytes.get(at).ok_or("configuration cut short")? as usize;
        at += 1;
        let ids = bytes.get(at..at + 8 * count).ok_or("configuration cut short")?;
        sets.push(ids.chunks_exact(8).map(|id| NodeId(read_u64(id))).collect());
        at += 8 * count;
    }
    let learners = sets.pop().expect("three sets");
    let voters_outgoing = sets.pop().expect("three sets");
    let voters = sets.pop().expect("three sets");
    let mut addresses = BTreeMap::new();
    if at < bytes.len() {
        let count = bytes[at] as usize;
        at += 1;
        for _ in 0..count {
            let id = bytes.get(at..at + 8).ok_or("configuration cut short")?;
            let length = *bytes.get(at + 8).ok_or("configuration cut short")? as usize;
            let address = bytes.get(at + 9..at + 9 + length).ok_or("configuration cut short")?;
            let address = std::str::from_utf8(address).map_err(|_| "a member address is not UTF-8")?;
            addresses.insert(NodeId(read_u64(id)), address.to_string());
            at += 9 + length;
        }
    }
    let membership = Membership { voters, voters_outgoing, learners, addresses };
    if membership_bytes(&membership) != at {
        return Err("configuration not in canonical form (a repeated id, or an empty address list)".into());
    }
    membership.check()?;
    Ok((membership, at))
}

/// Appends the frame for `entry` to `out`. The caller has checked the size limit.
pub fn encode(entry: &Entry, out: &mut Vec<u8>) {
    let payload_length = payload_bytes(entry);
    let length = u32::try_from(payload_length).expect("caller bounds record size");
    let start = out.len();
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(RECORD_TYPE_ENTRY);
    out.extend_from_slice(&entry.term.0.to_le_bytes());
    out.extend_from_slice(&entry.index.0.to_le_bytes());
    match &entry.kind {
        EntryKind::Noop => out.push(KIND_NOOP),
        EntryKind::Command(data) => {
            out.push(KIND_COMMAND);
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(data);
        }
        EntryKind::Config(membership) => {
            out.push(KIND_CONFIG);
            encode_membership(membership, out);
        }
    }
    assert_eq!(out.len() - start, FRAME_HEADER_BYTES + payload_length, "frame size");
    let checksum = checksum(&out[start..start + 4], &out[start + FRAME_HEADER_BYTES..]);
    out[start + 4..start + 8].copy_from_slice(&checksum.to_le_bytes());
    debug_assert_eq!(decode(&out[start..], usize::MAX), Frame::Entry { entry: entry.clone(), frame_bytes: out.len() - start });
}

/// Reads the frame at the start of `bytes` (which run to the end of the file).
pub fn decode(bytes: &[u8], payload_bytes_max: usize) -> Frame {
    if bytes.len() < FRAME_HEADER_BYTES {
        return Frame::Short;
    }
    let length = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    let frame_bytes = FRAME_HEADER_BYTES + length as usize;
    if frame_bytes > bytes.len() {
        return Frame::Short;
    }
    if (length as usize) < PAYLOAD_BYTES_MIN || length as usize > payload_bytes_max {
        return Frame::BadLength { length };
    }
    let stored = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let payload = &bytes[FRAME_HEADER_BYTES..frame_bytes];
    if checksum(&bytes[0..4], payload) != stored {
        return Frame::BadChecksum { frame_bytes };
    }
    match decode_payload(payload) {
        Ok(entry) => Frame::Entry { entry, frame_bytes },
        Err(reason) => Frame::BadPayload { reason },
    }
}

/// Whether `written` — the bytes of a record that failed to decode, up to the last non-zero
/// byte of the file — can be the start of the record its own header announces, as the
/// record at `expected_index`: nothing written past its end, and every field that is
/// wholly present agrees (length in bounds, record type, index, and the payload length the
/// entry itself describes). A torn write leaves such a prefix; a flipped bit rarely does.
pub fn is_consistent_prefix(written: &[u8], expected_index: LogIndex, payload_bytes_max: usize) -> bool {
    let Some(length_bytes) = written.get(0..4) else { return true };
    let length = u32::from_le_bytes(length_bytes.try_into().expect("4 bytes")) as usize;
    if !(PAYLOAD_BYTES_MIN..=payload_bytes_max).contains(&length) || FRAME_HEADER_BYTES + length < written.len() {
        return false;
    }
    let payload = written.get(FRAME_HEADER_BYTES..).unwrap_or(&[]);
    if payload.first().is_some_and(|record_type| *record_type != RECORD_TYPE_ENTRY) {
        return false;
    }
    if payload.get(9..17).is_some_and(|index| read_u64(index) != expected_index.0) {
        return false;
    }
    let described = match payload.get(17) {
        None => None,
        Some(&KIND_NOOP) => Some(PAYLOAD_BYTES_MIN),
        Some(&KIND_COMMAND) => payload.get(18..22).map(|bytes| PAYLOAD_BYTES_MIN + 4 + u32::from_le_bytes(bytes.try_into().expect("4 bytes")) as usize),
        // Its length is spread over three counts; the checks above must do.
        Some(&KIND_CONFIG) => None,
        Some(_) => return false,
    };
    described.is_none_or(|described| described == length)
}

fn checksum(length_bytes: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(length_bytes), payload)
}

fn decode_payload(payload: &[u8]) -> Result<Entry, String> {
    if payload[0] != RECORD_TYPE_ENTRY {
        return Err(format!("unknown record type {}", payload[0]));
    }
    let term = Term(read_u64(&payload[1..9]));
    let index = LogIndex(read_u64(&payload[9..17]));
    let kind = match payload[17] {
        KIND_NOOP => EntryKind::Noop,
        KIND_COMMAND => EntryKind::Command(decode_command(&payload[18..])?.into()),
        KIND_CONFIG => EntryKind::Config(decode_membership(&payload[18..])?.0),
        other => return Err(format!("unknown entry kind {other}")),
    };
    let entry = Entry { term, index, kind };
    if payload_bytes(&entry) != payload.len() {
        return Err(format!("payload is {} bytes but its entry takes {}", payload.len(), payload_bytes(&entry)));
    }
    Ok(entry)
}

fn decode_command(rest: &[u8]) -> Result<Vec<u8>, String> {
    if rest.len() < 4 {
        return Err("command length missing".to_string());
    }
    let data_bytes = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
    if data_bytes > rest.len() - 4 {
        return Err(format!("command of {data_bytes} bytes runs past the payload"));
    }
    Ok(rest[4..4 + data_bytes].to_vec())
}

fn read_u64(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(index: u64, data: &[u8]) -> Entry {
        Entry { term: Term(3), index: LogIndex(index), kind: EntryKind::Command(data.to_vec().into()) }
    }

    #[test]
    fn round_trips_every_kind() {
        let config = Membership { voters: [NodeId(1), NodeId(4)].into(), voters_outgoing: [NodeId(1), NodeId(2)].into(), learners: [NodeId(9)].into(), addresses: [(NodeId(4), "node-4.example:7004".to_string()), (NodeId(9), "[::1]:7009".to_string())].into() };
        let config = Entry { term: Term(2), index: LogIndex(3), kind: EntryKind::Config(config) };
        for entry in [command(7, b"hello"), command(8, b""), Entry { term: Term(1), index: LogIndex(1), kind: EntryKind::Noop }, config] {
            let mut bytes = Vec::new();
            encode(&entry, &mut bytes);
            assert_eq!(bytes.len(), frame_bytes(&entry));
            assert_eq!(decode(&bytes, 1024), Frame::Entry { entry, frame_bytes: bytes.len() });
        }
    }

    #[test]
    fn every_prefix_is_short() {
        let mut bytes = Vec::new();
        encode(&command(1, b"abc"), &mut bytes);
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut], 1024), Frame::Short, "cut at {cut}");
        }
    }

    #[test]
    fn every_flipped_payload_byte_fails_the_checksum() {
        let mut bytes = Vec::new();
        encode(&command(1, b"abc"), &mut bytes);
        for position in 4..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[position] ^= 0x40;
            assert_eq!(decode(&damaged, 1024), Frame::BadChecksum { frame_bytes: bytes.len() }, "byte {position}");
        }
    }

    #[test]
    fn every_prefix_of_a_record_is_consistent() {
        let mut bytes = Vec::new();
        encode(&command(9, b"abcdef"), &mut bytes);
        for cut in 0..=bytes.len() {
            assert!(is_consistent_prefix(&bytes[..cut], LogIndex(9), 1024), "cut at {cut}");
        }
        assert!(!is_consistent_prefix(&bytes, LogIndex(10), 1024), "wrong index");
    }

    #[test]
    fn a_changed_length_is_not_consistent() {
        let mut bytes = Vec::new();
        encode(&command(9, b"abcdef"), &mut bytes);
        for length in [bytes[0] - 1, bytes[0] + 1, bytes[0] + 100] {
            let mut damaged = bytes.clone();
            damaged[0] = length;
            assert!(!is_consistent_prefix(&damaged, LogIndex(9), 1024), "length {length}");
        }
    }

    #[test]
    fn length_outside_limits_is_rejected() {
        let mut bytes = Vec::new();
        encode(&command(1, b"abcdef"), &mut bytes);
        let length = (bytes.len() - FRAME_HEADER_BYTES) as u32;
        assert_eq!(decode(&bytes, length as usize - 1), Frame::BadLength { length });
        bytes[0..4].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(decode(&bytes, 1024), Frame::BadLength { length: 3 });
    }
}
