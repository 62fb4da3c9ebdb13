//! sha256 digests: `sha256:<hex>` on the wire, `sha256-<hex>` as a blob's file name.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// A sha256 content digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    pub fn from_bytes(bytes: [u8; 32]) -> Digest {
        Digest(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses `sha256:<64 lowercase hex>` (the wire form) or `sha256-<hex>` (the file-name form).
    pub fn parse(s: &str) -> Result<Digest> {
        let bad = || Error::InvalidDigest {
            digest: s.to_string(),
        };
        let hex = s
            .strip_prefix("sha256:")
            .or_else(|| s.strip_prefix("sha256-"))
            .ok_or_else(bad)?;
        if hex.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks_exact(2).enumerate() {
            out[i] = (nibble(pair[0]).ok_or_else(bad)? << 4) | nibble(pair[1]).ok_or_else(bad)?;
        }
        Ok(Digest(out))
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from(b"0123456789abcdef"[(b >> 4) as usize]));
            s.push(char::from(b"0123456789abcdef"[(b & 15) as usize]));
        }
        s
    }

    /// `sha256-<hex>`, the blob's file name in Ollama's layout.
    pub fn file_name(&self) -> String {
        format!("sha256-{}", self.hex())
    }

    /// The first 12 hex digits, as `ollama list` shows an ID.
    pub fn short(&self) -> String {
        self.hex()[..12].to_string()
    }

    /// Digest of a byte slice.
    pub fn of_bytes(data: &[u8]) -> Digest {
        Digest(Sha256::digest(data).into())
    }

    /// Digest and length of a file's contents, read in 1 MiB blocks.
    pub fn of_file(path: &Path) -> Result<(Digest, u64)> {
        let mut f = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut len = 0u64;
        loop {
            let n = f.read(&mut buf).map_err(|e| Error::io("read", path, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            len += n as u64;
        }
        Ok((Digest(hasher.finalize().into()), len))
    }
}

// Lowercase only: the same blob must always have the same file name.
fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Digest> {
        Digest::parse(s)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest_and_forms() {
        let d = Digest::of_bytes(b"abc");
        assert_eq!(
            d.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Digest::parse(&d.to_string()).unwrap(), d);
        assert_eq!(Digest::parse(&d.file_name()).unwrap(), d);
        assert_eq!(d.short(), "ba7816bf8f01");
    }

    #[test]
    fn rejects_bad_digests() {
        let good = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert!(Digest::parse(good).is_ok());
        for bad in [
            "",
            "sha256:",
            &good.to_uppercase(),
            &good[..good.len() - 1],
            &format!("{good}0"),
            "md5:ba7816bf8f01cfea414140de5dae2223",
            "sha256:zz7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad:?}");
        }
    }
}
