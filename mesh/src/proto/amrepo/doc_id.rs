//! automerge-repo document ids and `automerge:` URLs.
//!
//! On the wire and in URLs a document id is the bs58check string of the id's bytes: base58
//! (Bitcoin alphabet) of the bytes followed by the first four bytes of their double SHA-256.
//! automerge-repo makes 16-byte ids (UUIDs) but accepts any bytes that decode; samod and our
//! store hold exactly 16 (the store derives them from names, `crdt-store`'s
//! `DocName::document_id`, and its keys use this same string). A URL is `automerge:<id>`,
//! optionally followed by `#` and `|`-separated heads, each the bs58check string of a 32-byte
//! change hash.
//!
//! Base58 decoding is quadratic in the input, so strings are bounded before they are decoded.

use crate::proto::wire::DocIdBytes;

/// Longest document id string decoded, in characters (a 16-byte id takes 22 to 28).
pub const MAX_DOCUMENT_ID_LEN: usize = 128;

/// Longest `automerge:` URL parsed, in bytes (room for some 300 heads).
pub const MAX_URL_LEN: usize = 16 << 10;

/// What starts every automerge-repo URL.
pub const URL_PREFIX: &str = "automerge:";

/// Why a string is not a usable document id or URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentIdError {
    /// The id is longer than [`MAX_DOCUMENT_ID_LEN`] characters.
    #[error("document id of {len} characters exceeds {max}")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The id contains a character outside the base58 alphabet.
    #[error("document id {id:?} is not base58: {reason}")]
    NotBase58 {
        /// The id as given.
        id: String,
        /// What the base58 decoder said.
        reason: String,
    },
    /// The id decodes, but its last four bytes are not the checksum of the rest (or it is
    /// shorter than a checksum).
    #[error("document id {id:?} fails its bs58check checksum")]
    BadChecksum {
        /// The id as given.
        id: String,
    },
    /// The id is valid but does not hold exactly 16 bytes.
    #[error("document id {id:?} holds {len} bytes, not 16")]
    WrongLength {
        /// The id as given.
        id: String,
        /// How many bytes it holds.
        len: usize,
    },
    /// The URL does not start with `automerge:`, or is longer than [`MAX_URL_LEN`].
    #[error("{url:?} is not an automerge: URL")]
    NotAUrl {
        /// The URL as given (cut to [`MAX_DOCUMENT_ID_LEN`] bytes).
        url: String,
    },
    /// The URL has more than one `#` heads section.
    #[error("automerge: URL has more than one heads section")]
    ManyHeadSections,
    /// A head in the URL is not the bs58check string of 32 bytes.
    #[error("head {head:?} in the URL is not the bs58check string of a 32-byte change hash")]
    BadHead {
        /// The head as given (cut to [`MAX_DOCUMENT_ID_LEN`] bytes).
        head: String,
    },
}

/// The bs58check string of an id's bytes, as automerge-repo's `binaryToDocumentId` writes it.
pub fn document_id_string(bytes: &[u8]) -> String {
    bs58::encode(bytes).with_check().into_string()
}

/// The bytes of a bs58check document id, of any length automerge-repo accepts (see
/// [`parse_document_id16`] for the ids this node can hold).
pub fn parse_document_id(id: &str) -> Result<Vec<u8>, DocumentIdError> {
    if id.len() > MAX_DOCUMENT_ID_LEN {
        return Err(DocumentIdError::TooLong {
            len: id.len(),
            max: MAX_DOCUMENT_ID_LEN,
        });
    }
    bs58::decode(id)
        .with_check(None)
        .into_vec()
        .map_err(|e| match e {
            bs58::decode::Error::InvalidChecksum { .. } | bs58::decode::Error::NoChecksum => {
                DocumentIdError::BadChecksum { id: id.to_owned() }
            }
            other => DocumentIdError::NotBase58 {
                id: id.to_owned(),
                reason: other.to_string(),
            },
        })
}

/// The 16 bytes of a bs58check document id; an id of another length is
/// [`DocumentIdError::WrongLength`].
pub fn parse_document_id16(id: &str) -> Result<DocIdBytes, DocumentIdError> {
    let bytes = parse_document_id(id)?;
    DocIdBytes::try_from(bytes.as_slice()).map_err(|_| DocumentIdError::WrongLength {
        id: id.to_owned(),
        len: bytes.len(),
    })
}

/// The `automerge:` URL of an id's bytes, as `stringifyAutomergeUrl` writes it.
pub fn automerge_url(bytes: &[u8]) -> String {
    format!("{URL_PREFIX}{}", document_id_string(bytes))
}

/// The `automerge:` URL of an id's bytes at the given heads (change hashes): `#` and the
/// heads' bs58check strings joined by `|`.
pub fn automerge_url_at(bytes: &[u8], heads: &[[u8; 32]]) -> String {
    let heads: Vec<String> = heads.iter().map(|h| document_id_string(h)).collect();
    format!("{}#{}", automerge_url(bytes), heads.join("|"))
}

/// A parsed `automerge:` URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AutomergeUrl {
    /// The document id string (bs58check).
    pub document_id: String,
    /// The id's bytes (of any length; 16 for ids this node holds).
    pub bytes: Vec<u8>,
    /// The heads after `#`, if the URL has a heads section (possibly empty).
    pub heads: Option<Vec<[u8; 32]>>,
}

impl AutomergeUrl {
    /// Parses a URL as automerge-repo's `parseAutomergeUrl` does.
    pub fn parse(url: &str) -> Result<AutomergeUrl, DocumentIdError> {
        let not_a_url = || DocumentIdError::NotAUrl { url: cut(url) };
        if url.len() > MAX_URL_LEN {
            return Err(not_a_url());
        }
        let mut sections = url.split('#');
        let base = sections.next().unwrap_or_default();
        let heads_section = sections.next();
        if sections.next().is_some() {
            return Err(DocumentIdError::ManyHeadSections);
        }
        let document_id = base.strip_prefix(URL_PREFIX).ok_or_else(not_a_url)?;
        // automerge-repo matches `^automerge:(\w+)$`.
        if document_id.is_empty()
            || !document_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(not_a_url());
        }
        let bytes = parse_document_id(document_id)?;
        let heads = match heads_section {
            None => None,
            Some("") => Some(Vec::new()),
            Some(section) => Some(
                section
                    .split('|')
                    .map(|head| {
                        parse_document_id(head)
                            .ok()
                            .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
                            .ok_or_else(|| DocumentIdError::BadHead { head: cut(head) })
                    })
                    .collect::<Result<_, _>>()?,
            ),
        };
        Ok(AutomergeUrl {
            document_id: document_id.to_owned(),
            bytes,
            heads,
        })
    }

    /// The id's 16 bytes, when it has exactly 16.
    pub fn id16(&self) -> Option<DocIdBytes> {
        DocIdBytes::try_from(self.bytes.as_slice()).ok()
    }
}

impl std::fmt::Display for AutomergeUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{URL_PREFIX}{}", self.document_id)?;
        if let Some(heads) = &self.heads {
            f.write_str("#")?;
            for (i, head) in heads.iter().enumerate() {
                if i > 0 {
                    f.write_str("|")?;
                }
                f.write_str(&document_id_string(head))?;
            }
        }
        Ok(())
    }
}

/// A string cut to [`MAX_DOCUMENT_ID_LEN`] bytes at a character boundary, for error messages.
fn cut(s: &str) -> String {
    let mut end = s.len().min(MAX_DOCUMENT_ID_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZERO_TO_15: DocIdBytes = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

    /// Computed with automerge-repo 2.5.6's `stringifyAutomergeUrl` (bs58check 3.0.1) in
    /// Node.js 20.
    const JS_VECTORS: &[(&[u8], &str)] = &[
        (&ZERO_TO_15, "1Bhh3pU9gLXZiNDL6PEa1Gs9fh"),
        (&[0; 16], "11111111111111114Ki9Gx"),
        (&[0xff; 16], "4ZrjxJnU1LA5xSyrWMNuXTozYEvA"),
        (&[], "3QJmnh"),
        (&[1, 2, 3], "3DUz7ncyT"),
        (
            &[7; 32],
            "46WPtSJH9Mc1rNbRaWo6k2v6Bm8dc1FuCFxS2n6gFo7M27Ucu",
        ),
    ];

    #[test]
    fn ids_match_automerge_repo() {
        for (bytes, id) in JS_VECTORS {
            assert_eq!(document_id_string(bytes), *id);
            assert_eq!(parse_document_id(id).unwrap(), *bytes);
        }
        assert_eq!(
            parse_document_id16("1Bhh3pU9gLXZiNDL6PEa1Gs9fh").unwrap(),
            ZERO_TO_15
        );
        assert_eq!(
            automerge_url(&ZERO_TO_15),
            "automerge:1Bhh3pU9gLXZiNDL6PEa1Gs9fh"
        );
    }

    #[test]
    fn ids_of_other_lengths_decode_but_are_not_16() {
        assert_eq!(
            parse_document_id16("3DUz7ncyT"),
            Err(DocumentIdError::WrongLength {
                id: "3DUz7ncyT".into(),
                len: 3
            })
        );
        assert!(matches!(
            parse_document_id16("3QJmnh"),
            Err(DocumentIdError::WrongLength { len: 0, .. })
        ));
    }

    #[test]
    fn bad_ids_are_refused() {
        // One character changed: the checksum fails.
        assert!(matches!(
            parse_document_id("1Bhh3pU9gLXZiNDL6PEa1Gs9fi"),
            Err(DocumentIdError::BadChecksum { .. })
        ));
        // '0', 'O', 'I' and 'l' are not base58.
        assert!(matches!(
            parse_document_id("0Bhh3pU9gLXZiNDL6PEa1Gs9fh"),
            Err(DocumentIdError::NotBase58 { .. })
        ));
        assert!(matches!(
            parse_document_id(""),
            Err(DocumentIdError::BadChecksum { .. })
        ));
        assert!(matches!(
            parse_document_id("2"),
            Err(DocumentIdError::BadChecksum { .. })
        ));
        let long = "1".repeat(MAX_DOCUMENT_ID_LEN + 1);
        assert!(matches!(
            parse_document_id(&long),
            Err(DocumentIdError::TooLong { .. })
        ));
        // A legacy UUID string is not a bs58check id.
        assert!(parse_document_id("3760df37-a4c6-4f66-9ecd-732039a9385d").is_err());
    }

    #[test]
    fn urls_parse_and_format_as_automerge_repo_does() {
        let url = AutomergeUrl::parse("automerge:1Bhh3pU9gLXZiNDL6PEa1Gs9fh").unwrap();
        assert_eq!(url.document_id, "1Bhh3pU9gLXZiNDL6PEa1Gs9fh");
        assert_eq!(url.id16(), Some(ZERO_TO_15));
        assert_eq!(url.heads, None);
        assert_eq!(url.to_string(), "automerge:1Bhh3pU9gLXZiNDL6PEa1Gs9fh");

        // From `stringifyAutomergeUrl({documentId, heads: [bs58check(32 × 0x01)]})`.
        let js =
            "automerge:1Bhh3pU9gLXZiNDL6PEa1Gs9fh#SeLqn3UAUoRymWmwW7axrzJK7JfNaBR2cHCryA6cFsgFkHEF";
        let url = AutomergeUrl::parse(js).unwrap();
        assert_eq!(url.heads, Some(vec![[1; 32]]));
        assert_eq!(url.to_string(), js);
        assert_eq!(automerge_url_at(&ZERO_TO_15, &[[1; 32]]), js);

        let empty = AutomergeUrl::parse("automerge:1Bhh3pU9gLXZiNDL6PEa1Gs9fh#").unwrap();
        assert_eq!(empty.heads, Some(vec![]));
        assert_eq!(empty.to_string(), "automerge:1Bhh3pU9gLXZiNDL6PEa1Gs9fh#");
    }

    #[test]
    fn bad_urls_are_refused() {
        for bad in [
            "1Bhh3pU9gLXZiNDL6PEa1Gs9fh",
            "automerge:",
            "automerge:1Bhh3pU9gLXZiNDL6PEa1Gs9fh/x",
            "Automerge:1Bhh3pU9gLXZiNDL6PEa1Gs9fh",
        ] {
            assert!(
                matches!(
                    AutomergeUrl::parse(bad),
                    Err(DocumentIdError::NotAUrl { .. })
                ),
                "{bad}"
            );
        }
        assert_eq!(
            AutomergeUrl::parse("automerge:1Bhh3pU9gLXZiNDL6PEa1Gs9fh#a#b"),
            Err(DocumentIdError::ManyHeadSections)
        );
        // A head that is a valid id of 16 bytes is not a change hash.
        assert!(matches!(
            AutomergeUrl::parse("automerge:1Bhh3pU9gLXZiNDL6PEa1Gs9fh#1Bhh3pU9gLXZiNDL6PEa1Gs9fh"),
            Err(DocumentIdError::BadHead { .. })
        ));
        let long = format!("automerge:{}", "1".repeat(MAX_URL_LEN));
        assert!(matches!(
            AutomergeUrl::parse(&long),
            Err(DocumentIdError::NotAUrl { .. })
        ));
    }

    /// The ids crdt-store derives (`DocName::document_id`: the first 16 bytes of
    /// SHA-256("rhizome-doc-v1\0" mesh "\0" name)) are ordinary 16-byte ids to automerge-repo.
    #[test]
    fn derived_ids_match_automerge_repo() {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(b"rhizome-doc-v1\0mesh-1234\0mesh");
        let digest = hasher.finalize();
        let id: DocIdBytes = digest[..16].try_into().unwrap();
        // Computed in Node.js with crypto's SHA-256 and automerge-repo's stringifyAutomergeUrl.
        assert_eq!(document_id_string(&id), "QcYKLPcGdsmcjMoJAudtvaia3Um");
        assert_eq!(
            parse_document_id16("QcYKLPcGdsmcjMoJAudtvaia3Um").unwrap(),
            id
        );
    }
}
