//! Wire messages between nodes, with a versioned, bounded binary encoding.
//!
//! A frame is `length: u32 (big endian) | version: u8 | kind: u8 | body`, where `length` counts
//! everything after itself. Bodies are built from unsigned LEB128 varints, length-prefixed byte
//! strings and fixed-size ids. Every length is checked against a bound before anything is
//! allocated, so a peer sending garbage costs at most one frame's bound of memory, and every
//! decoding failure names what was wrong.

use std::fmt;

/// The wire version this build speaks. A frame of another version is refused.
pub const WIRE_VERSION: u8 = 1;

/// Largest frame accepted (length field value). Automerge sync messages for small, windowed
/// documents stay far below this.
pub const MAX_FRAME_LEN: usize = 16 << 20;

/// Longest string field (names, zones, reasons).
pub const MAX_STRING_LEN: usize = 1024;

/// Most entries in one catalogue frame; larger catalogues are split over several frames.
pub const MAX_CATALOGUE_ENTRIES: usize = 65_536;

/// Most zones one status message names in its claims, and most entries in its chain. A zone
/// path has at most `election::MAX_ZONE_DEPTH` levels, so real messages stay far below this.
pub const MAX_STATUS_ZONES: usize = 32;

/// Bytes of the frame header after the length field.
const HEADER_LEN: usize = 2;

/// Longest blob one [`Message::ChunkData`] carries. Chunks are at most 1 MiB; a manifest of a
/// very large artifact (tens of thousands of chunks) may be a few MiB.
pub const MAX_BLOB_LEN: usize = 8 << 20;

/// The SHA-256 of a chunk or a manifest: what a blob is asked for by and checked against.
pub type BlobHash = [u8; 32];

/// How many buckets a catalogue is divided into (by the top four bits of document ids).
pub const BUCKETS: usize = 16;

/// A 16-byte document id (the automerge-repo document id's bytes).
pub type DocIdBytes = [u8; 16];

/// A digest of a document's heads, so peers can tell which documents differ without sending
/// every head.
pub type HeadsDigest = [u8; 16];

/// The role a node announces; it feeds the aggregator election's rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// An edge node.
    Edge,
    /// A cloud peer.
    Cloud,
}

/// The power source a node announces; it feeds the aggregator election's rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Power {
    /// Not known (no power supply information, or not configured).
    Unknown,
    /// Running on battery.
    Battery,
    /// Mains power.
    Mains,
}

/// What a node can offer as an aggregator, as it announces it. Uptime is not here: the election
/// measures it itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Capabilities {
    /// Power source.
    pub power: Power,
    /// Logical CPUs.
    pub cpus: u32,
    /// Total memory, MiB.
    pub memory_mb: u64,
    /// Free space on the filesystem of the node's data dir, MiB.
    pub disk_free_mb: u64,
}

/// A zone the sender aggregates.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Claim {
    /// The zone path (`""` is the root).
    pub zone: String,
    /// True once the sender has held the claim for the election's settling time: an
    /// established claim outranks a fresh one when two nodes claim the same zone.
    pub established: bool,
}

/// A node's election status: its zone, rank inputs, the zones it aggregates and the aggregator
/// chain it sees. Sent on every new connection and whenever it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The sender's zone path (`""` is the root).
    pub zone: String,
    /// The sender's role.
    pub role: Role,
    /// The sender's capabilities.
    pub caps: Capabilities,
    /// Seconds since the sender's election started, when this status was made.
    pub uptime_s: u64,
    /// The zones the sender aggregates, from its own zone upwards (at most
    /// [`MAX_STATUS_ZONES`]).
    pub aggregates: Vec<Claim>,
    /// The sender's aggregator chain, from its zone up to the root: each zone with its
    /// aggregator, if known (at most [`MAX_STATUS_ZONES`] entries).
    pub chain: Vec<(String, Option<String>)>,
}

/// Everything one node says to another over a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// The first message on a connection, in both directions.
    Hello(Hello),
    /// Liveness: sent periodically; any frame also counts as liveness.
    Heartbeat {
        /// Increases with every heartbeat of the sender.
        seq: u64,
    },
    /// A digest of every document the sender may share with the receiver and of their heads,
    /// sent first on a connection: equal summaries mean there is nothing to sync, so a
    /// reconnect between nodes in sync costs two small frames.
    Summary {
        /// Digest over the sender's catalogue for the receiver (ids and heads digests, in id
        /// order).
        digest: HeadsDigest,
        /// How many documents that catalogue holds.
        docs: u64,
        /// The sender wants the receiver's summary back even if the receiver sent one already
        /// (an explicit `sync` request).
        reply: bool,
    },
    /// After summaries differ: a digest per bucket of the sender's catalogue for the
    /// receiver (a document's bucket is the top four bits of its id), so that only the buckets
    /// that differ are listed whole.
    Buckets {
        /// [`BUCKETS`] digests, bucket 0 first.
        digests: Vec<HeadsDigest>,
    },
    /// The documents of some buckets that the sender may share with the receiver, with a
    /// digest of their heads and their names (a receiver verifies a name against the id, which
    /// derives from it).
    Catalogue {
        /// The buckets listed, one bit each (bit `k` for bucket `k`).
        buckets: u16,
        /// True on the last frame of a catalogue that did not fit in one.
        complete: bool,
        /// The documents.
        entries: Vec<CatalogueEntry>,
    },
    /// One Automerge sync message for one document.
    Sync {
        /// The document.
        doc: DocIdBytes,
        /// The document's name, sent with the first message about a document the receiver may
        /// not know by name.
        name: Option<String>,
        /// The Automerge sync message (`automerge::sync::Message::encode`), opaque here.
        payload: Vec<u8>,
    },
    /// The sender's heads of one document: a change that reached the sender from another peer,
    /// offered onward, or word that the sender holds the heads the receiver just sent. A
    /// receiver whose heads differ opens a sync session; one whose heads match has nothing to
    /// do. Far cheaper than an Automerge message, which costs a Bloom filter over the changes
    /// since the last shared heads to build and to read.
    Heads {
        /// The document.
        doc: DocIdBytes,
        /// A digest of the sender's heads.
        digest: HeadsDigest,
        /// The document's name, when the receiver may not know it by name.
        name: Option<String>,
    },
    /// The sender is closing the connection on purpose.
    Goodbye {
        /// Why, for the other side's log.
        reason: String,
    },
    /// The sender's election status (capabilities, claims, aggregator chain).
    Status(Status),
    /// A request for one blob of an artifact (a chunk, or a manifest: both are named by their
    /// SHA-256).
    ChunkWant {
        /// The blob's hash.
        hash: BlobHash,
        /// How many more times the request may be passed up the aggregator chain by a node
        /// that lacks the blob; 0: answer from what you hold.
        hops: u8,
    },
    /// A blob, in answer to a [`Message::ChunkWant`]; the receiver checks it against its hash.
    ChunkData {
        /// The blob's hash.
        hash: BlobHash,
        /// Its bytes (at most [`MAX_BLOB_LEN`]), shared rather than copied on their way.
        bytes: bytes::Bytes,
    },
    /// The sender does not hold the blob and could not get it.
    ChunkMissing {
        /// The blob's hash.
        hash: BlobHash,
    },
}

/// One document of a catalogue.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CatalogueEntry {
    /// The document id.
    pub doc: DocIdBytes,
    /// A digest of the sender's heads of the document.
    pub digest: HeadsDigest,
    /// The document's name (`workflow/x`, `results/<node>/<window>`, ...).
    pub name: String,
}

/// The introduction each side sends first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The mesh the sender belongs to.
    pub mesh_id: String,
    /// The sender's node id.
    pub node_id: String,
    /// The sender's role.
    pub role: Role,
    /// The sender's zone path.
    pub zone: String,
    /// The UDP port the sender accepts connections on (0 if it does not listen).
    pub listen_port: u16,
}

/// Why bytes could not be decoded as a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The frame announces a length above [`MAX_FRAME_LEN`].
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_LEN}")]
    Oversized(usize),
    /// The frame is too short to hold a header.
    #[error("frame of {0} bytes is too short for a header")]
    TooShort(usize),
    /// The frame was written by an incompatible version.
    #[error("frame has wire version {0}, this node speaks version {WIRE_VERSION}")]
    Version(u8),
    /// The frame's kind is not one this version knows.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// A field ends beyond the end of the frame.
    #[error("{0} is truncated")]
    Truncated(&'static str),
    /// A field's length exceeds its bound.
    #[error("{field} of {len} exceeds the limit of {max}")]
    FieldTooLong {
        /// The field.
        field: &'static str,
        /// Its announced length.
        len: u64,
        /// The bound.
        max: usize,
    },
    /// A field has a value outside its domain.
    #[error("{0} has an invalid value")]
    Invalid(&'static str),
    /// A string field is not UTF-8.
    #[error("{0} is not UTF-8")]
    NotUtf8(&'static str),
    /// Bytes remain after the message ended.
    #[error("{0} bytes left over after the message")]
    TrailingBytes(usize),
}

const KIND_HELLO: u8 = 1;
const KIND_HEARTBEAT: u8 = 2;
const KIND_CATALOGUE: u8 = 3;
const KIND_SYNC: u8 = 4;
const KIND_GOODBYE: u8 = 5;
const KIND_STATUS: u8 = 6;
const KIND_SUMMARY: u8 = 7;
const KIND_BUCKETS: u8 = 8;
const KIND_HEADS: u8 = 9;
const KIND_CHUNK_WANT: u8 = 10;
const KIND_CHUNK_DATA: u8 = 11;
const KIND_CHUNK_MISSING: u8 = 12;

/// Smallest encoding of a catalogue entry (id, digest, empty name), to check a claimed count
/// against the bytes present before allocating for it.
const MIN_ENTRY_LEN: usize = 16 + 16 + 1;

impl Message {
    /// Appends the message as one frame to `out`.
    ///
    /// # Panics
    /// If the encoded frame would exceed [`MAX_FRAME_LEN`] or a string exceeds
    /// [`MAX_STRING_LEN`]: senders must split or refuse such messages before encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        out.push(WIRE_VERSION);
        match self {
            Message::Hello(hello) => {
                out.push(KIND_HELLO);
                put_str(out, &hello.mesh_id);
                put_str(out, &hello.node_id);
                out.push(role_byte(hello.role));
                put_str(out, &hello.zone);
                out.extend_from_slice(&hello.listen_port.to_be_bytes());
            }
            Message::Heartbeat { seq } => {
                out.push(KIND_HEARTBEAT);
                put_varint(out, *seq);
            }
            Message::Summary {
                digest,
                docs,
                reply,
            } => {
                out.push(KIND_SUMMARY);
                out.extend_from_slice(digest);
                put_varint(out, *docs);
                out.push(u8::from(*reply));
            }
            Message::Buckets { digests } => {
                assert!(digests.len() == BUCKETS, "a bucket digest per bucket");
                out.push(KIND_BUCKETS);
                for digest in digests {
                    out.extend_from_slice(digest);
                }
            }
            Message::Catalogue {
                buckets,
                complete,
                entries,
            } => {
                assert!(
                    entries.len() <= MAX_CATALOGUE_ENTRIES,
                    "catalogue too large"
                );
                out.push(KIND_CATALOGUE);
                out.extend_from_slice(&buckets.to_be_bytes());
                out.push(u8::from(*complete));
                put_varint(out, entries.len() as u64);
                for entry in entries {
                    out.extend_from_slice(&entry.doc);
                    out.extend_from_slice(&entry.digest);
                    put_str(out, &entry.name);
                }
            }
            Message::Sync { doc, name, payload } => {
                out.push(KIND_SYNC);
                out.extend_from_slice(doc);
                put_optional_str(out, name.as_deref());
                out.extend_from_slice(payload);
            }
            Message::Heads { doc, digest, name } => {
                out.push(KIND_HEADS);
                out.extend_from_slice(doc);
                out.extend_from_slice(digest);
                put_optional_str(out, name.as_deref());
            }
            Message::Goodbye { reason } => {
                out.push(KIND_GOODBYE);
                put_str(out, reason);
            }
            Message::Status(status) => {
                assert!(
                    status.aggregates.len() <= MAX_STATUS_ZONES
                        && status.chain.len() <= MAX_STATUS_ZONES,
                    "status names too many zones"
                );
                out.push(KIND_STATUS);
                put_str(out, &status.zone);
                out.push(role_byte(status.role));
                out.push(power_byte(status.caps.power));
                put_varint(out, u64::from(status.caps.cpus));
                put_varint(out, status.caps.memory_mb);
                put_varint(out, status.caps.disk_free_mb);
                put_varint(out, status.uptime_s);
                put_varint(out, status.aggregates.len() as u64);
                for claim in &status.aggregates {
                    put_str(out, &claim.zone);
                    out.push(u8::from(claim.established));
                }
                put_varint(out, status.chain.len() as u64);
                for (zone, node) in &status.chain {
                    put_str(out, zone);
                    put_optional_str(out, node.as_deref());
                }
            }
            Message::ChunkWant { hash, hops } => {
                out.push(KIND_CHUNK_WANT);
                out.extend_from_slice(hash);
                out.push(*hops);
            }
            Message::ChunkData { hash, bytes } => {
                assert!(bytes.len() <= MAX_BLOB_LEN, "blob too large");
                out.push(KIND_CHUNK_DATA);
                out.extend_from_slice(hash);
                out.extend_from_slice(bytes);
            }
            Message::ChunkMissing { hash } => {
                out.push(KIND_CHUNK_MISSING);
                out.extend_from_slice(hash);
            }
        }
        let len = out.len() - start - 4;
        assert!(
            len <= MAX_FRAME_LEN,
            "frame of {len} bytes exceeds the limit"
        );
        out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
    }

    /// The size of the message's frame, length field included. A message whose frame would
    /// exceed `4 + MAX_FRAME_LEN` cannot be sent (and [`Message::encode`] would panic).
    pub fn encoded_len(&self) -> usize {
        let body = match self {
            Message::Hello(h) => {
                str_len(&h.mesh_id) + str_len(&h.node_id) + 1 + str_len(&h.zone) + 2
            }
            Message::Heartbeat { seq } => varint_len(*seq),
            Message::Summary { docs, .. } => 16 + varint_len(*docs) + 1,
            Message::Buckets { digests } => digests.len() * 16,
            Message::Catalogue { entries, .. } => {
                2 + 1
                    + varint_len(entries.len() as u64)
                    + entries.iter().map(|e| 32 + str_len(&e.name)).sum::<usize>()
            }
            Message::Sync { name, payload, .. } => {
                16 + optional_str_len(name.as_deref()) + payload.len()
            }
            Message::Heads { name, .. } => 16 + 16 + optional_str_len(name.as_deref()),
            Message::Goodbye { reason } => str_len(reason),
            Message::Status(status) => {
                str_len(&status.zone)
                    + 2
                    + varint_len(u64::from(status.caps.cpus))
                    + varint_len(status.caps.memory_mb)
                    + varint_len(status.caps.disk_free_mb)
                    + varint_len(status.uptime_s)
                    + varint_len(status.aggregates.len() as u64)
                    + status
                        .aggregates
                        .iter()
                        .map(|c| str_len(&c.zone) + 1)
                        .sum::<usize>()
                    + varint_len(status.chain.len() as u64)
                    + status
                        .chain
                        .iter()
                        .map(|(zone, node)| str_len(zone) + optional_str_len(node.as_deref()))
                        .sum::<usize>()
            }
            Message::ChunkWant { .. } => 32 + 1,
            Message::ChunkData { bytes, .. } => 32 + bytes.len(),
            Message::ChunkMissing { .. } => 32,
        };
        4 + HEADER_LEN + body
    }

    /// The message as one frame.
    pub fn to_frame(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decodes one message from the front of `buf`. `Ok(None)` means more bytes are needed;
    /// `Ok(Some((message, used)))` consumed `used` bytes. A frame is checked whole before it is
    /// accepted.
    pub fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, WireError> {
        let Some(len) = frame_len(buf)? else {
            return Ok(None);
        };
        if buf.len() < 4 + len {
            return Ok(None);
        }
        let message = Message::decode_body(&buf[4..4 + len])?;
        Ok(Some((message, 4 + len)))
    }

    /// Decodes a frame's content (everything after the length field).
    pub fn decode_body(frame: &[u8]) -> Result<Message, WireError> {
        if frame.len() < HEADER_LEN {
            return Err(WireError::TooShort(frame.len()));
        }
        if frame[0] != WIRE_VERSION {
            return Err(WireError::Version(frame[0]));
        }
        let mut r = Reader { buf: &frame[2..] };
        let message = match frame[1] {
            KIND_HELLO => {
                let mesh_id = r.string("hello mesh id")?;
                let node_id = r.string("hello node id")?;
                let role = match r.byte("hello role")? {
                    0 => Role::Edge,
                    1 => Role::Cloud,
                    _ => return Err(WireError::Invalid("hello role")),
                };
                let zone = r.string("hello zone")?;
                let port = r.take(2, "hello listen port")?;
                Message::Hello(Hello {
                    mesh_id,
                    node_id,
                    role,
                    zone,
                    listen_port: u16::from_be_bytes([port[0], port[1]]),
                })
            }
            KIND_HEARTBEAT => Message::Heartbeat {
                seq: r.varint("heartbeat sequence")?,
            },
            KIND_BUCKETS => {
                let mut digests = Vec::with_capacity(BUCKETS);
                for _ in 0..BUCKETS {
                    digests.push(r.id("bucket digest")?);
                }
                Message::Buckets { digests }
            }
            KIND_CATALOGUE => {
                let mask = r.take(2, "catalogue buckets")?;
                let buckets = u16::from_be_bytes([mask[0], mask[1]]);
                let complete = r.flag("catalogue flag")?;
                let count = r.varint("catalogue length")?;
                if count > MAX_CATALOGUE_ENTRIES as u64 {
                    return Err(WireError::FieldTooLong {
                        field: "catalogue",
                        len: count,
                        max: MAX_CATALOGUE_ENTRIES,
                    });
                }
                // The count is checked against the bytes present before allocating for it.
                let count = count as usize;
                if r.buf.len() < count * MIN_ENTRY_LEN {
                    return Err(WireError::Truncated("catalogue entries"));
                }
                let mut entries = Vec::with_capacity(count);
                for _ in 0..count {
                    entries.push(CatalogueEntry {
                        doc: r.id("catalogue document id")?,
                        digest: r.id("catalogue heads digest")?,
                        name: r.string("catalogue document name")?,
                    });
                }
                Message::Catalogue {
                    buckets,
                    complete,
                    entries,
                }
            }
            KIND_SUMMARY => Message::Summary {
                digest: r.id("summary digest")?,
                docs: r.varint("summary document count")?,
                reply: r.flag("summary reply flag")?,
            },
            KIND_SYNC => {
                let doc = r.id("sync document id")?;
                let name = r.optional_string("sync name flag", "sync document name")?;
                let payload = r.buf.to_vec();
                r.buf = &[];
                Message::Sync { doc, name, payload }
            }
            KIND_HEADS => Message::Heads {
                doc: r.id("heads document id")?,
                digest: r.id("heads digest")?,
                name: r.optional_string("heads name flag", "heads document name")?,
            },
            KIND_GOODBYE => Message::Goodbye {
                reason: r.string("goodbye reason")?,
            },
            KIND_STATUS => Message::Status(decode_status(&mut r)?),
            KIND_CHUNK_WANT => Message::ChunkWant {
                hash: r.hash("chunk want hash")?,
                hops: r.byte("chunk want hops")?,
            },
            KIND_CHUNK_DATA => {
                let hash = r.hash("chunk data hash")?;
                if r.buf.len() > MAX_BLOB_LEN {
                    return Err(WireError::FieldTooLong {
                        field: "chunk data",
                        len: r.buf.len() as u64,
                        max: MAX_BLOB_LEN,
                    });
                }
                let bytes = bytes::Bytes::copy_from_slice(r.buf);
                r.buf = &[];
                Message::ChunkData { hash, bytes }
            }
            KIND_CHUNK_MISSING => Message::ChunkMissing {
                hash: r.hash("chunk missing hash")?,
            },
            other => return Err(WireError::UnknownKind(other)),
        };
        if !r.buf.is_empty() {
            return Err(WireError::TrailingBytes(r.buf.len()));
        }
        Ok(message)
    }
}

fn decode_status(r: &mut Reader<'_>) -> Result<Status, WireError> {
    let zone = r.string("status zone")?;
    let role = match r.byte("status role")? {
        0 => Role::Edge,
        1 => Role::Cloud,
        _ => return Err(WireError::Invalid("status role")),
    };
    let power = match r.byte("status power")? {
        0 => Power::Unknown,
        1 => Power::Battery,
        2 => Power::Mains,
        _ => return Err(WireError::Invalid("status power")),
    };
    let cpus =
        u32::try_from(r.varint("status cpus")?).map_err(|_| WireError::Invalid("status cpus"))?;
    let memory_mb = r.varint("status memory")?;
    let disk_free_mb = r.varint("status free disk")?;
    let uptime_s = r.varint("status uptime")?;
    // Each claim takes at least two bytes and each chain entry at least two, so a count is
    // checked against both its bound and the bytes present before anything is allocated.
    let claims = r.count("status claims", MAX_STATUS_ZONES, 2)?;
    let mut aggregates = Vec::with_capacity(claims);
    for _ in 0..claims {
        let zone = r.string("status claim zone")?;
        let established = match r.byte("status claim flag")? {
            0 => false,
            1 => true,
            _ => return Err(WireError::Invalid("status claim flag")),
        };
        aggregates.push(Claim { zone, established });
    }
    let entries = r.count("status chain", MAX_STATUS_ZONES, 2)?;
    let mut chain = Vec::with_capacity(entries);
    for _ in 0..entries {
        let zone = r.string("status chain zone")?;
        let node = r.optional_string("status chain flag", "status chain node")?;
        chain.push((zone, node));
    }
    Ok(Status {
        zone,
        role,
        caps: Capabilities {
            power,
            cpus,
            memory_mb,
            disk_free_mb,
        },
        uptime_s,
        aggregates,
        chain,
    })
}

fn role_byte(role: Role) -> u8 {
    match role {
        Role::Edge => 0,
        Role::Cloud => 1,
    }
}

fn power_byte(power: Power) -> u8 {
    match power {
        Power::Unknown => 0,
        Power::Battery => 1,
        Power::Mains => 2,
    }
}

/// Bytes of a [`Message::ChunkData`] frame before its blob: the length field, the header and
/// the hash. A blob is hundreds of KiB: writing the head and the blob as they are, and reading
/// the blob straight into its own buffer, spares copying it into and out of a frame buffer.
pub const CHUNK_DATA_HEAD: usize = 4 + HEADER_LEN + 32;

/// The head of the [`Message::ChunkData`] frame of a blob of `len` bytes; the frame is this
/// followed by the blob.
pub fn chunk_data_head(hash: &BlobHash, len: usize) -> [u8; CHUNK_DATA_HEAD] {
    assert!(len <= MAX_BLOB_LEN, "blob too large");
    let mut head = [0u8; CHUNK_DATA_HEAD];
    let frame = (HEADER_LEN + 32 + len) as u32;
    head[..4].copy_from_slice(&frame.to_be_bytes());
    head[4] = WIRE_VERSION;
    head[5] = KIND_CHUNK_DATA;
    head[6..].copy_from_slice(hash);
    head
}

/// Reads the head of a [`Message::ChunkData`] frame: the blob's hash and length. An error for
/// a frame of another kind or version, or a blob longer than [`MAX_BLOB_LEN`].
pub fn read_chunk_data_head(head: &[u8; CHUNK_DATA_HEAD]) -> Result<(BlobHash, usize), WireError> {
    let frame = frame_len(head)?.expect("four bytes are there");
    if head[4] != WIRE_VERSION {
        return Err(WireError::Version(head[4]));
    }
    if head[5] != KIND_CHUNK_DATA {
        return Err(WireError::Invalid(
            "the kind of a frame where only blobs go",
        ));
    }
    let Some(len) = frame.checked_sub(HEADER_LEN + 32) else {
        return Err(WireError::Truncated("chunk data hash"));
    };
    if len > MAX_BLOB_LEN {
        return Err(WireError::FieldTooLong {
            field: "chunk data",
            len: len as u64,
            max: MAX_BLOB_LEN,
        });
    }
    let hash: BlobHash = head[6..].try_into().expect("32 bytes");
    Ok((hash, len))
}

/// The length announced by a frame's first four bytes, checked against the bound. `None` if
/// fewer than four bytes are available.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, WireError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize;
    if len > MAX_FRAME_LEN {
        return Err(WireError::Oversized(len));
    }
    Ok(Some(len))
}

impl fmt::Display for Power {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Power::Unknown => "unknown",
            Power::Battery => "battery",
            Power::Mains => "mains",
        })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Edge => "edge",
            Role::Cloud => "cloud",
        })
    }
}

fn varint_len(v: u64) -> usize {
    (64 - v.max(1).leading_zeros() as usize).div_ceil(7)
}

fn str_len(s: &str) -> usize {
    varint_len(s.len() as u64) + s.len()
}

/// The length [`put_optional_str`] writes.
fn optional_str_len(s: Option<&str>) -> usize {
    1 + s.map_or(0, str_len)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn put_optional_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
        None => out.push(0),
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    assert!(s.len() <= MAX_STRING_LEN, "string field too long");
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated(field));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn byte(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, field)?[0])
    }

    fn flag(&mut self, field: &'static str) -> Result<bool, WireError> {
        match self.byte(field)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::Invalid(field)),
        }
    }

    fn hash(&mut self, field: &'static str) -> Result<BlobHash, WireError> {
        Ok(self.take(32, field)?.try_into().expect("32 bytes"))
    }

    fn id(&mut self, field: &'static str) -> Result<[u8; 16], WireError> {
        Ok(self.take(16, field)?.try_into().expect("16 bytes"))
    }

    fn varint(&mut self, field: &'static str) -> Result<u64, WireError> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let byte = self.byte(field)?;
            let bits = u64::from(byte & 0x7f);
            if i == 9 && bits > 1 {
                return Err(WireError::Invalid(field));
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                // Refuse non-minimal encodings so each value has exactly one encoding.
                if i > 0 && byte == 0 {
                    return Err(WireError::Invalid(field));
                }
                return Ok(value);
            }
        }
        Err(WireError::Invalid(field))
    }

    /// A length-prefixed count of items of at least `min_item` bytes each, at most `max`.
    fn count(
        &mut self,
        field: &'static str,
        max: usize,
        min_item: usize,
    ) -> Result<usize, WireError> {
        let count = self.varint(field)?;
        if count > max as u64 {
            return Err(WireError::FieldTooLong {
                field,
                len: count,
                max,
            });
        }
        let count = count as usize;
        if self.buf.len() < count * min_item {
            return Err(WireError::Truncated(field));
        }
        Ok(count)
    }

    fn string(&mut self, field: &'static str) -> Result<String, WireError> {
        let len = self.varint(field)?;
        if len > MAX_STRING_LEN as u64 {
            return Err(WireError::FieldTooLong {
                field,
                len,
                max: MAX_STRING_LEN,
            });
        }
        let bytes = self.take(len as usize, field)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| WireError::NotUtf8(field))
    }

    /// A presence flag, then the string if present.
    fn optional_string(
        &mut self,
        flag: &'static str,
        field: &'static str,
    ) -> Result<Option<String>, WireError> {
        if self.flag(flag)? {
            self.string(field).map(Some)
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_string() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[a-z0-9/._-]{0,40}").unwrap()
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (
                arb_string(),
                arb_string(),
                any::<bool>(),
                arb_string(),
                any::<u16>()
            )
                .prop_map(|(mesh_id, node_id, cloud, zone, listen_port)| {
                    Message::Hello(Hello {
                        mesh_id,
                        node_id,
                        role: if cloud { Role::Cloud } else { Role::Edge },
                        zone,
                        listen_port,
                    })
                }),
            any::<u64>().prop_map(|seq| Message::Heartbeat { seq }),
            (any::<[u8; 16]>(), any::<u64>(), any::<bool>()).prop_map(|(digest, docs, reply)| {
                Message::Summary {
                    digest,
                    docs,
                    reply,
                }
            }),
            proptest::collection::vec(any::<[u8; 16]>(), BUCKETS)
                .prop_map(|digests| Message::Buckets { digests }),
            (
                any::<u16>(),
                any::<bool>(),
                proptest::collection::vec(
                    (any::<[u8; 16]>(), any::<[u8; 16]>(), arb_string())
                        .prop_map(|(doc, digest, name)| CatalogueEntry { doc, digest, name }),
                    0..20
                )
            )
                .prop_map(|(buckets, complete, entries)| Message::Catalogue {
                    buckets,
                    complete,
                    entries
                }),
            (
                any::<[u8; 16]>(),
                proptest::option::of(arb_string()),
                proptest::collection::vec(any::<u8>(), 0..300)
            )
                .prop_map(|(doc, name, payload)| Message::Sync { doc, name, payload }),
            (
                any::<[u8; 16]>(),
                any::<[u8; 16]>(),
                proptest::option::of(arb_string())
            )
                .prop_map(|(doc, digest, name)| Message::Heads { doc, digest, name }),
            arb_string().prop_map(|reason| Message::Goodbye { reason }),
            arb_status().prop_map(Message::Status),
            (any::<[u8; 32]>(), any::<u8>())
                .prop_map(|(hash, hops)| Message::ChunkWant { hash, hops }),
            (
                any::<[u8; 32]>(),
                proptest::collection::vec(any::<u8>(), 0..300)
            )
                .prop_map(|(hash, bytes)| Message::ChunkData {
                    hash,
                    bytes: bytes.into()
                }),
            any::<[u8; 32]>().prop_map(|hash| Message::ChunkMissing { hash }),
        ]
    }

    fn arb_status() -> impl Strategy<Value = Status> {
        (
            (
                arb_string(),
                any::<bool>(),
                0u8..3,
                any::<u32>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
            ),
            proptest::collection::vec((arb_string(), any::<bool>()), 0..6),
            proptest::collection::vec((arb_string(), proptest::option::of(arb_string())), 0..6),
        )
            .prop_map(
                |((zone, cloud, power, cpus, memory_mb, disk_free_mb, uptime_s), claims, chain)| {
                    Status {
                        zone,
                        role: if cloud { Role::Cloud } else { Role::Edge },
                        caps: Capabilities {
                            power: [Power::Unknown, Power::Battery, Power::Mains][power as usize],
                            cpus,
                            memory_mb,
                            disk_free_mb,
                        },
                        uptime_s,
                        aggregates: claims
                            .into_iter()
                            .map(|(zone, established)| Claim { zone, established })
                            .collect(),
                        chain,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn messages_round_trip(messages in proptest::collection::vec(arb_message(), 1..8)) {
            let mut stream = Vec::new();
            for m in &messages {
                m.encode(&mut stream);
            }
            let mut decoded = Vec::new();
            let mut at = 0;
            while let Some((m, used)) = Message::decode(&stream[at..]).unwrap() {
                decoded.push(m);
                at += used;
            }
            prop_assert_eq!(at, stream.len());
            prop_assert_eq!(
                messages.iter().map(Message::encoded_len).sum::<usize>(),
                stream.len()
            );
            prop_assert_eq!(decoded, messages);
        }

        #[test]
        fn every_prefix_asks_for_more(message in arb_message()) {
            let frame = message.to_frame();
            for cut in 0..frame.len() {
                prop_assert_eq!(Message::decode(&frame[..cut]), Ok(None));
            }
        }

        /// The blob path (head, then the blob as it is) is the same frame as `encode`'s, and
        /// the head reader takes exactly blob frames.
        #[test]
        fn blob_heads_agree_with_whole_frames(message in arb_message()) {
            let frame = message.to_frame();
            let head: [u8; CHUNK_DATA_HEAD] = match frame.get(..CHUNK_DATA_HEAD) {
                Some(head) => head.try_into().unwrap(),
                None => return Ok(()),
            };
            match &message {
                Message::ChunkData { hash, bytes } => {
                    prop_assert_eq!(chunk_data_head(hash, bytes.len()), head);
                    prop_assert_eq!(&frame[CHUNK_DATA_HEAD..], &bytes[..]);
                    prop_assert_eq!(read_chunk_data_head(&head), Ok((*hash, bytes.len())));
                }
                _ => prop_assert!(read_chunk_data_head(&head).is_err()),
            }
        }

        #[test]
        fn blob_heads_of_garbage_are_refused_or_within_bounds(head in any::<[u8; CHUNK_DATA_HEAD]>()) {
            if let Ok((_, len)) = read_chunk_data_head(&head) {
                prop_assert!(len <= MAX_BLOB_LEN);
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Message::decode(&bytes);
            let _ = Message::decode_body(&bytes);
        }

        /// Random bytes rarely reach deep into a message; damaged valid frames do. Whatever
        /// still decodes must re-encode to exactly the bytes it came from.
        #[test]
        fn damaged_frames_never_panic_and_reencode_exactly(
            message in arb_message(),
            damage in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        ) {
            let mut frame = message.to_frame();
            for (at, byte) in damage {
                let at = 4 + at % (frame.len() - 4);
                frame[at] = byte;
            }
            if let Ok(Some((decoded, used))) = Message::decode(&frame) {
                prop_assert_eq!(decoded.to_frame(), &frame[..used]);
            }
        }
    }

    #[test]
    fn bad_frames_say_what_is_wrong() {
        let mut frame = Message::Heartbeat { seq: 1 }.to_frame();
        frame[4] = 9;
        assert_eq!(Message::decode(&frame), Err(WireError::Version(9)));
        let mut frame = Message::Heartbeat { seq: 1 }.to_frame();
        frame[5] = 77;
        assert_eq!(Message::decode(&frame), Err(WireError::UnknownKind(77)));
        let huge = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        assert_eq!(
            Message::decode(&huge),
            Err(WireError::Oversized(MAX_FRAME_LEN + 1))
        );
        let mut frame = Message::Goodbye {
            reason: "bye".into(),
        }
        .to_frame();
        frame.push(0);
        frame[3] += 1;
        assert_eq!(Message::decode(&frame), Err(WireError::TrailingBytes(1)));
        // A catalogue that claims more entries than it carries is refused before allocating.
        let body = [WIRE_VERSION, KIND_CATALOGUE, 0, 1, 1, 0xff, 0xff, 0x03];
        assert_eq!(
            Message::decode_body(&body),
            Err(WireError::Truncated("catalogue entries"))
        );
        // A status that claims more zones than allowed, or more than it carries.
        let body = [WIRE_VERSION, KIND_STATUS, 0, 0, 2, 1, 1, 1, 1, 33];
        assert_eq!(
            Message::decode_body(&body),
            Err(WireError::FieldTooLong {
                field: "status claims",
                len: 33,
                max: MAX_STATUS_ZONES
            })
        );
        let body = [WIRE_VERSION, KIND_STATUS, 0, 0, 2, 1, 1, 1, 1, 3, 0, 0];
        assert_eq!(
            Message::decode_body(&body),
            Err(WireError::Truncated("status claims"))
        );
        let body = [WIRE_VERSION, KIND_STATUS, 0, 0, 3, 1, 1, 1, 1, 0, 0];
        assert_eq!(
            Message::decode_body(&body),
            Err(WireError::Invalid("status power"))
        );
        // A chain entry whose presence flag is neither 0 nor 1.
        let body = [WIRE_VERSION, KIND_STATUS, 0, 0, 2, 1, 1, 1, 1, 0, 1, 0, 2];
        assert_eq!(
            Message::decode_body(&body),
            Err(WireError::Invalid("status chain flag"))
        );
        // A non-minimal varint.
        let body = [WIRE_VERSION, KIND_HEARTBEAT, 0x81, 0x00];
        assert_eq!(
            Message::decode_body(&body),
            Err(WireError::Invalid("heartbeat sequence"))
        );
    }
}
