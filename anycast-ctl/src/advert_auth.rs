//! Authentication of membership advertisements (RFC 1546, "Security Considerations": without
//! it any host on the link could volunteer to serve an anycast address and divert its traffic).
//!
//! - [`Keys`]: the shared keys, from a key file that only its owner may read. The file may hold
//!   several keys for rollover: the first one signs, every one verifies.
//! - [`sign`]: fills the key id and the HMAC-SHA256 of an emitted message.
//! - [`verify`]: checks them; the tag comparison is constant-time.
//!
//! The HMAC covers every byte before it (header, entries, key id): see
//! [`Packet::signed_bytes`] and docs/advert-format.md.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anycast_common::advert::{self, HMAC_LEN, Packet};
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The shortest secret a key file may hold, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

/// Why an advertisement failed authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("advertisement signed with unknown key id {0}")]
    UnknownKey(u32),
    #[error("advertisement HMAC does not match")]
    BadHmac,
    #[error("malformed advertisement: {0}")]
    Malformed(#[from] advert::Error),
}

impl AuthError {
    /// A short snake_case name of the problem, for counters and logs.
    pub const fn reason(&self) -> &'static str {
        match self {
            AuthError::UnknownKey(_) => "unknown_key",
            AuthError::BadHmac => "bad_hmac",
            AuthError::Malformed(err) => err.reason(),
        }
    }
}

/// A key file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "key file {path} has mode {mode:04o}, which lets group or others access it; run `chmod 600 {path}`"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("key file {path}: {source}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: KeysError,
    },
}

/// Key file contents that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeysError {
    #[error("line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("no keys: add a [[key]] table with an id and a secret")]
    NoKeys,
    #[error("key {id}: secret is not hex ({reason})")]
    BadHex { id: u32, reason: &'static str },
    #[error(
        "key {id}: secret has {len} bytes; at least {MIN_SECRET_LEN} ({} hex digits) are needed",
        MIN_SECRET_LEN * 2
    )]
    ShortSecret { id: u32, len: usize },
    #[error("key id {0} appears more than once")]
    DuplicateId(u32),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    #[serde(default)]
    key: Vec<KeyEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    id: u32,
    secret: String,
    /// The sender addresses this key may speak for; empty = any.
    #[serde(default)]
    senders: Vec<ipnet::IpNet>,
}

/// A set of shared keys, each an id and a secret of at least [`MIN_SECRET_LEN`] bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    keys: Vec<(u32, Vec<u8>)>,
    /// Key id -> the sender prefixes it is limited to (absent: any sender).
    senders: Vec<(u32, Vec<ipnet::IpNet>)>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys")
            .field("ids", &self.ids().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// Keys in signing order: the first signs. Fails on no keys, a duplicate id or a short
    /// secret.
    pub fn new(keys: impl IntoIterator<Item = (u32, Vec<u8>)>) -> Result<Keys, KeysError> {
        let mut out: Vec<(u32, Vec<u8>)> = Vec::new();
        for (id, secret) in keys {
            if secret.len() < MIN_SECRET_LEN {
                return Err(KeysError::ShortSecret {
                    id,
                    len: secret.len(),
                });
            }
            if out.iter().any(|(other, _)| *other == id) {
                return Err(KeysError::DuplicateId(id));
            }
            out.push((id, secret));
        }
        if out.is_empty() {
            return Err(KeysError::NoKeys);
        }
        Ok(Keys {
            keys: out,
            senders: Vec::new(),
        })
    }

    /// Whether key `id` may sign for `sender`: a key with a `senders` list only for addresses
    /// inside it, so that one member's key cannot speak for another member. IPv4 and IPv6
    /// prefixes may be mixed; a sender matches only prefixes of its own family.
    pub fn allows(&self, id: u32, sender: std::net::IpAddr) -> bool {
        self.senders
            .iter()
            .find(|(key, _)| *key == id)
            .is_none_or(|(_, nets)| nets.iter().any(|n| n.contains(&sender)))
    }

    /// Parses the contents of a key file:
    ///
    /// ```toml
    /// [[key]]
    /// id = 1
    /// secret = "64 or more hex digits"
    /// # optional: the member addresses this key may sign for, of either family
    /// senders = ["203.0.113.0/24", "2001:db8:203::/48"]
    /// ```
    pub fn from_toml(text: &str) -> Result<Keys, KeysError> {
        let file: KeyFile = toml::from_str(text).map_err(|err| KeysError::Syntax {
            line: err
                .span()
                .map_or(0, |span| text[..span.start].matches('\n').count() + 1),
            message: err.message().to_owned(),
        })?;
        let mut keys = Vec::with_capacity(file.key.len());
        let mut senders = Vec::new();
        for entry in file.key {
            let secret = decode_hex(&entry.secret).map_err(|reason| KeysError::BadHex {
                id: entry.id,
                reason,
            })?;
            keys.push((entry.id, secret));
            if !entry.senders.is_empty() {
                senders.push((entry.id, entry.senders));
            }
        }
        let mut keys = Keys::new(keys)?;
        keys.senders = senders;
        Ok(keys)
    }

    /// Reads a key file; refuses one whose mode lets group or others access it.
    pub fn load(path: &Path) -> Result<Keys, KeyFileError> {
        let read_error = |source| KeyFileError::Read {
            path: path.to_owned(),
            source,
        };
        let (file, text) = crate::textfile::read(path).map_err(read_error)?;
        let mode = file.metadata().map_err(read_error)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(KeyFileError::Permissions {
                path: path.to_owned(),
                mode: mode & 0o7777,
            });
        }
        Keys::from_toml(&text).map_err(|source| KeyFileError::Invalid {
            path: path.to_owned(),
            source,
        })
    }

    /// The secret of key `id`.
    pub fn get(&self, id: u32) -> Option<&[u8]> {
        self.keys
            .iter()
            .find(|(key, _)| *key == id)
            .map(|(_, secret)| secret.as_slice())
    }

    /// The key a sender signs with: the first of the file.
    pub fn signing(&self) -> (u32, &[u8]) {
        let (id, secret) = &self.keys[0];
        (*id, secret)
    }

    /// The key ids, in file order.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.keys.iter().map(|(id, _)| *id)
    }
}

fn decode_hex(text: &str) -> Result<Vec<u8>, &'static str> {
    fn nibble(c: u8) -> Result<u8, &'static str> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err("a character is not a hex digit"),
        }
    }
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return Err("odd number of digits");
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Ok(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

fn hmac(secret: &[u8]) -> HmacSha256 {
    <HmacSha256 as KeyInit>::new_from_slice(secret).expect("HMAC takes keys of any length")
}

/// Writes `key_id` into a message emitted by [`advert::Repr::emit`], then its HMAC under
/// `secret`. Fails, writing nothing, if `buf` is not exactly such a message.
pub fn sign(buf: &mut [u8], key_id: u32, secret: &[u8]) -> Result<(), advert::Error> {
    let mut packet = Packet::new_checked(buf)?;
    packet.set_key_id(key_id);
    let tag = hmac(secret)
        .chain_update(packet.signed_bytes())
        .finalize()
        .into_bytes();
    packet.hmac_mut().copy_from_slice(&tag[..HMAC_LEN]);
    Ok(())
}

/// Checks the HMAC of a message against the key its key id names (constant-time compare).
/// Never panics: a message failing [`Packet::check_len`] is [`AuthError::Malformed`].
pub fn verify<T: AsRef<[u8]>>(packet: &Packet<T>, keys: &Keys) -> Result<(), AuthError> {
    packet.check_len()?;
    let key_id = packet.key_id();
    let secret = keys.get(key_id).ok_or(AuthError::UnknownKey(key_id))?;
    hmac(secret)
        .chain_update(packet.signed_bytes())
        .verify_slice(packet.hmac())
        .map_err(|_| AuthError::BadHmac)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::net::Ipv4Addr;

    use anycast_common::advert::{Membership, Repr};

    use super::*;

    const SECRET: [u8; 32] = [0x0b; 32];

    /// The message of anycast-common's advert tests (key 7), as emitted (HMAC zero).
    fn message() -> Vec<u8> {
        let mut repr = Repr::new(Ipv4Addr::new(192, 0, 2, 10), 42, 1_700_000_000_000, 0);
        for (last, hold_ms, preference, weight) in [(1, 30_000, 10, 100), (2, 0, 0, 0)] {
            let anycast = Ipv4Addr::new(198, 51, 100, last).into();
            repr.push(Membership {
                anycast,
                hold_ms,
                preference,
                weight,
            })
            .unwrap();
        }
        let mut buf = vec![0; repr.buffer_len()];
        repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
        buf
    }

    fn signed() -> Vec<u8> {
        let mut buf = message();
        sign(&mut buf, 7, &SECRET).unwrap();
        buf
    }

    fn keys() -> Keys {
        Keys::new([(3, vec![0x33; 32]), (7, SECRET.to_vec())]).unwrap()
    }

    /// A file under the temp dir, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, text: &str, mode: u32) -> TempFile {
            let path = std::env::temp_dir().join(format!(
                "anycast-advert-auth-{}-{name}.toml",
                std::process::id()
            ));
            fs::write(&path, text).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = fs::remove_file(&self.0);
        }
    }

    fn hex(byte: &str, n: usize) -> String {
        byte.repeat(n)
    }

    #[test]
    fn mac_matches_known_answer() {
        // HMAC-SHA256(0x0b * 32, first 60 bytes), computed independently (Python hmac).
        let expected = "6012e53a2c97cf9ed9f212c5ab8e9086a617b775929c88b40f0dfd5e2831cf3a";
        let buf = signed();
        let packet = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(packet.key_id(), 7);
        assert_eq!(packet.hmac(), decode_hex(expected).unwrap());
        assert_eq!(packet.signed_bytes().len(), 60);
    }

    /// The HMAC covers the IPv6 entries like any other byte: the known answer for the
    /// `PACKET6_BYTES` vector of anycast-common (sender entry and membership included).
    #[test]
    fn ipv6_message_mac_matches_known_answer() {
        // HMAC-SHA256(0x0b * 32, first 84 bytes), computed independently (Python hmac).
        let expected = "4b41b08adb7b21c9c6650bb2219c26b2e9b9942b03c5da42f47c9511fb4a1dcb";
        let sender = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x203, 0, 0, 0, 0, 2);
        let mut repr = Repr::new(sender, 42, 1_700_000_000_000, 0);
        repr.push(Membership {
            anycast: "2001:db8:53::53".parse().unwrap(),
            hold_ms: 30_000,
            preference: 10,
            weight: 100,
        })
        .unwrap();
        repr.set_link_addr([0x02, 0x11, 0, 0, 0, 0x02]).unwrap();
        let mut buf = vec![0; repr.buffer_len()];
        repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
        sign(&mut buf, 7, &SECRET).unwrap();
        let packet = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(packet.signed_bytes().len(), 84);
        assert_eq!(packet.hmac(), decode_hex(expected).unwrap());
        let keys = Keys::new([(7, SECRET.to_vec())]).unwrap();
        assert_eq!(verify(&packet, &keys), Ok(()));
        buf[50] ^= 1; // inside the IPv6 anycast address
        let packet = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(verify(&packet, &keys), Err(AuthError::BadHmac));
    }

    #[test]
    fn sign_then_verify() {
        let buf = signed();
        assert_eq!(verify(&Packet::new_unchecked(&buf[..]), &keys()), Ok(()));
        let keys = keys();
        let (id, secret) = keys.signing();
        assert_eq!(id, 3);
        let mut buf = message();
        sign(&mut buf, id, secret).unwrap();
        assert_eq!(verify(&Packet::new_unchecked(&buf[..]), &keys), Ok(()));
        sign(&mut buf, 7, &SECRET).unwrap();
        assert_eq!(buf, signed());
        assert_eq!(verify(&Packet::new_unchecked(&buf[..]), &keys), Ok(()));
    }

    #[test]
    fn wrong_key_fails() {
        let buf = signed();
        let other = Keys::new([(7, vec![0x0c; 32])]).unwrap();
        let err = verify(&Packet::new_unchecked(&buf[..]), &other).unwrap_err();
        assert_eq!(err, AuthError::BadHmac);
        assert_eq!(err.reason(), "bad_hmac");
    }

    #[test]
    fn unknown_key_id_fails() {
        let mut buf = message();
        sign(&mut buf, 9, &SECRET).unwrap();
        let err = verify(&Packet::new_unchecked(&buf[..]), &keys()).unwrap_err();
        assert_eq!(err, AuthError::UnknownKey(9));
        assert_eq!(err.reason(), "unknown_key");
    }

    #[test]
    fn any_flipped_bit_fails() {
        let good = signed();
        for bit in 0..good.len() * 8 {
            let mut buf = good.clone();
            buf[bit / 8] ^= 1 << (bit % 8);
            assert!(
                verify(&Packet::new_unchecked(&buf[..]), &keys()).is_err(),
                "bit {bit}"
            );
        }
    }

    #[test]
    fn malformed_messages_are_not_signed_or_verified() {
        let good = signed();
        for len in 0..good.len() {
            let err = verify(&Packet::new_unchecked(&good[..len]), &keys()).unwrap_err();
            assert_eq!(err, AuthError::Malformed(advert::Error::Truncated), "{len}");
            assert_eq!(err.reason(), "truncated");
        }
        let mut short = good[..good.len() - 1].to_vec();
        let before = short.clone();
        assert_eq!(sign(&mut short, 7, &SECRET), Err(advert::Error::Truncated));
        assert_eq!(short, before, "nothing written");
    }

    #[test]
    fn key_file_loads() {
        let text = format!(
            "[[key]]\nid = 2\nsecret = \"{}\"\n\n[[key]]\nid = 1\nsecret = \"{}\"\n",
            hex("AB", 32),
            hex("0f", 40)
        );
        let file = TempFile::new("good", &text, 0o600);
        let keys = Keys::load(&file.0).unwrap();
        assert_eq!(keys.ids().collect::<Vec<_>>(), [2, 1]);
        assert_eq!(keys.signing(), (2, &[0xab; 32][..]));
        assert_eq!(keys.get(1), Some(&[0x0f; 40][..]));
        assert_eq!(keys.get(3), None);
        assert!(
            !format!("{keys:?}").contains("171"),
            "Debug shows no secret"
        );
    }

    #[test]
    fn key_file_readable_by_others_refused() {
        let text = format!("[[key]]\nid = 1\nsecret = \"{}\"\n", hex("ab", 32));
        for mode in [0o644, 0o640, 0o604, 0o610] {
            let file = TempFile::new(&format!("mode{mode:o}"), &text, mode);
            let err = Keys::load(&file.0).unwrap_err();
            assert!(
                matches!(err, KeyFileError::Permissions { mode: m, .. } if m == mode),
                "{err:?}"
            );
            let message = err.to_string();
            assert!(message.contains(&*file.0.to_string_lossy()), "{message}");
            assert!(message.contains("chmod 600"), "{message}");
        }
        let file = TempFile::new("mode400", &text, 0o400);
        assert!(Keys::load(&file.0).is_ok());
    }

    #[test]
    fn missing_key_file_names_the_path() {
        let path = std::env::temp_dir().join("anycast-advert-auth-missing.toml");
        let err = Keys::load(&path).unwrap_err();
        assert!(matches!(err, KeyFileError::Read { .. }));
        assert!(err.to_string().contains("anycast-advert-auth-missing.toml"));
    }

    #[test]
    fn bad_key_files_rejected() {
        let key = |id: u32, secret: &str| format!("[[key]]\nid = {id}\nsecret = \"{secret}\"\n");
        let good = hex("ab", 32);
        let cases = [
            (key(1, &hex("zz", 32)), "bad_hex"),
            (key(1, &(good.clone() + "a")), "bad_hex"),
            (key(1, &hex("ab", 31)), "short"),
            (key(1, &good) + &key(1, &hex("cd", 32)), "duplicate"),
            (String::new(), "none"),
            (key(1, &good).replace("secret", "secrt"), "syntax"),
            (key(1, &good).replace("id = 1", "id = -1"), "syntax"),
            ("[[key]\n".to_owned(), "syntax"),
        ];
        for (text, expected) in cases {
            let err = Keys::from_toml(&text).unwrap_err();
            let kind = match err {
                KeysError::BadHex { id: 1, .. } => "bad_hex",
                KeysError::ShortSecret { id: 1, len: 31 } => "short",
                KeysError::DuplicateId(1) => "duplicate",
                KeysError::NoKeys => "none",
                KeysError::Syntax { line, .. } if line >= 1 => "syntax",
                _ => "other",
            };
            assert_eq!(kind, expected, "{text:?}: {err}");
            assert!(!err.to_string().contains('\n'), "one line: {err}");
        }
        let file = TempFile::new("short", &key(5, &hex("ab", 8)), 0o600);
        let err = Keys::load(&file.0).unwrap_err().to_string();
        assert!(err.contains("key 5: secret has 8 bytes"), "{err}");
        assert!(err.contains(&*file.0.to_string_lossy()), "{err}");
    }
}
