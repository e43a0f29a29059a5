//! Player tokens: `v1.<payload>.<tag>`, both base64url (no padding). The payload is the
//! expiry (seconds since the Unix epoch, 8 bytes big-endian) followed by the player name;
//! the tag is HMAC-SHA256 over `v1.` and the payload with the key from
//! `--player-token-key` (in Kubernetes a Secret mounted as a file). Whoever holds the key
//! mints tokens (`starmesh token`, bots, a studio's login service); the gateway only
//! verifies them. The name, and so the player and its ship, come from the token: a player
//! can act only as itself. Pure functions; the clock is a parameter.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};

use super::placement;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

const PREFIX: &str = "v1.";
/// Shortest key accepted: the HMAC-SHA256 block of security it is meant to carry.
pub const MIN_KEY_BYTES: usize = 32;
/// Longest token looked at (a 64-byte name makes about 110): anything longer is refused
/// before any decoding.
pub const MAX_TOKEN_LEN: usize = 512;
const TAG_BYTES: usize = 32;

/// Why a token was refused. The machine reason goes to the player in the
/// `starmesh-auth-error` metadata of an `UNAUTHENTICATED` status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no token")]
    Missing,
    #[error("the token is not a starmesh token")]
    Malformed,
    #[error("the token's signature does not match")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
}

impl TokenError {
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::Missing => "Missing",
            TokenError::Malformed => "Malformed",
            TokenError::BadSignature => "BadSignature",
            TokenError::Expired => "Expired",
        }
    }
}

impl From<TokenError> for tonic::Status {
    fn from(e: TokenError) -> Self {
        let mut s = tonic::Status::unauthenticated(format!("starmesh.auth: {e}"));
        s.metadata_mut()
            .insert("starmesh-auth-error", tonic::metadata::MetadataValue::from_static(e.reason()));
        s
    }
}

/// The shared HMAC key. Never printed (no `Debug` of the bytes).
#[derive(Clone)]
pub struct TokenKey(Vec<u8>);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    pub fn new(bytes: Vec<u8>) -> anyhow::Result<Self> {
        anyhow::ensure!(
            bytes.len() >= MIN_KEY_BYTES,
            "a player token key needs at least {MIN_KEY_BYTES} bytes, got {}",
            bytes.len()
        );
        Ok(Self(bytes))
    }

    /// The key file's bytes, without a trailing newline (`echo`/`kubectl create secret
    /// --from-literal` and editors add one).
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let mut bytes = std::fs::read(path).map_err(|e| {
            anyhow::anyhow!("cannot read the player token key {}: {e}", path.display())
        })?;
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        Self::new(bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// A fresh random key (`starmesh local`: its gateway and bots share it in memory).
    pub fn random() -> anyhow::Result<Self> {
        let mut b = vec![0u8; 32];
        getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness for a key: {e}"))?;
        Self::new(b)
    }

    fn mac(&self, payload: &str) -> HmacSha256 {
        // HMAC takes keys of any length, so this cannot fail.
        let mut m =
            <HmacSha256 as KeyInit>::new_from_slice(&self.0).expect("HMAC accepts any key length");
        m.update(PREFIX.as_bytes());
        m.update(payload.as_bytes());
        m
    }

    /// A token for `name` valid until `expires_unix` (seconds since the epoch).
    pub fn mint(&self, name: &str, expires_unix: u64) -> anyhow::Result<String> {
        anyhow::ensure!(
            placement::valid_name(name),
            "player names are 1-64 printable ASCII characters"
        );
        let mut raw = expires_unix.to_be_bytes().to_vec();
        raw.extend_from_slice(name.as_bytes());
        let payload = URL_SAFE_NO_PAD.encode(raw);
        let tag = URL_SAFE_NO_PAD.encode(self.mac(&payload).finalize().into_bytes());
        Ok(format!("{PREFIX}{payload}.{tag}"))
    }

    /// The player name a token stands for, if it is well-formed, signed with this key and
    /// not expired at `now_unix`. The signature is checked (in constant time) before
    /// anything in the payload is believed.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<String, TokenError> {
        self.verify_until(token, now_unix).map(|(name, _)| name)
    }

    /// [`verify`](Self::verify), and until when (seconds since the epoch) the token holds:
    /// an open session ends then, so an expired token never keeps playing.
    pub fn verify_until(&self, token: &str, now_unix: u64) -> Result<(String, u64), TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let rest = token.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
        let (payload, tag) = rest.split_once('.').ok_or(TokenError::Malformed)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| TokenError::Malformed)?;
        if tag.len() != TAG_BYTES {
            return Err(TokenError::Malformed);
        }
        self.mac(payload).verify_slice(&tag).map_err(|_| TokenError::BadSignature)?;
        let raw = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenError::Malformed)?;
        if raw.len() < 9 {
            return Err(TokenError::Malformed);
        }
        let (exp, name) = raw.split_at(8);
        let mut e = [0u8; 8];
        e.copy_from_slice(exp);
        let expires = u64::from_be_bytes(e);
        if expires <= now_unix {
            return Err(TokenError::Expired);
        }
        let name = std::str::from_utf8(name).map_err(|_| TokenError::Malformed)?;
        if !placement::valid_name(name) {
            return Err(TokenError::Malformed);
        }
        Ok((name.to_string(), expires))
    }
}

/// `starmesh token` flags.
#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    /// The player's name (1-64 printable ASCII characters): its player and ship.
    pub name: String,
    /// The key file the gateway verifies with (`starmesh gateway --player-token-key`).
    #[arg(long, env = "STARMESH_PLAYER_TOKEN_KEY")]
    pub player_token_key: std::path::PathBuf,
    /// How long the token is valid, e.g. `1h` as `3600s`, `30m`.
    #[arg(long, default_value = "3600s", value_parser = crate::bots::parse_duration)]
    pub ttl: std::time::Duration,
}

/// `starmesh token NAME`: prints the token on stdout (nothing else, so it can be piped).
pub fn main(a: TokenArgs) -> anyhow::Result<()> {
    let key = TokenKey::from_file(&a.player_token_key)?;
    let token = key.mint(&a.name, now_unix().saturating_add(a.ttl.as_secs().max(1)))?;
    println!("{token}");
    Ok(())
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> TokenKey {
        TokenKey::new(vec![b; 32]).unwrap()
    }

    #[test]
    fn a_minted_token_verifies_until_it_expires() {
        let k = key(1);
        let t = k.mint("alice", 1_000).unwrap();
        assert_eq!(k.verify(&t, 999), Ok("alice".to_string()));
        assert_eq!(k.verify(&t, 1_000), Err(TokenError::Expired));
    }

    #[test]
    fn forged_truncated_and_foreign_tokens_are_refused() {
        let k = key(1);
        let t = k.mint("alice", 1_000).unwrap();
        // Another key's token.
        assert_eq!(
            k.verify(&key(2).mint("alice", 1_000).unwrap(), 0),
            Err(TokenError::BadSignature)
        );
        // alice's signature on bob's payload.
        let bob = k.mint("bob", 1_000).unwrap();
        let (_, alice_tag) = t.rsplit_once('.').unwrap();
        let (bob_payload, _) = bob.rsplit_once('.').unwrap();
        assert_eq!(
            k.verify(&format!("{bob_payload}.{alice_tag}"), 0),
            Err(TokenError::BadSignature)
        );
        // A later expiry under the old signature.
        let mut raw = 2_000u64.to_be_bytes().to_vec();
        raw.extend_from_slice(b"alice");
        let (_, tag) = t.rsplit_once('.').unwrap();
        let forged = format!("v1.{}.{tag}", URL_SAFE_NO_PAD.encode(raw));
        assert_eq!(k.verify(&forged, 1_500), Err(TokenError::BadSignature));
        // Truncated anywhere.
        for n in [0, 1, 3, 10, t.len() / 2, t.len() - 1] {
            assert!(k.verify(&t[..n], 0).is_err(), "{n}");
        }
        assert_eq!(k.verify("", 0), Err(TokenError::Missing));
        assert_eq!(k.verify("dev.alice", 0), Err(TokenError::Malformed));
        assert_eq!(k.verify(&"v".repeat(MAX_TOKEN_LEN + 1), 0), Err(TokenError::Malformed));
    }

    #[test]
    fn keys_are_long_enough_and_names_valid() {
        assert!(TokenKey::new(vec![0; MIN_KEY_BYTES - 1]).is_err());
        assert!(key(1).mint("", 1).is_err());
        assert!(key(1).mint("a b", 1).is_err());
        assert_ne!(TokenKey::random().unwrap().0, TokenKey::random().unwrap().0);
    }

    #[test]
    fn the_key_file_may_end_with_a_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        std::fs::write(&p, format!("{}\n", "k".repeat(32))).unwrap();
        let k = TokenKey::from_file(&p).unwrap();
        assert_eq!(k.verify(&key(b'k').mint("a", 10).unwrap(), 0), Ok("a".into()));
        std::fs::write(&p, "short\n").unwrap();
        assert!(TokenKey::from_file(&p).is_err());
    }
}
