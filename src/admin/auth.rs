//! The admin server's bearer token (`--admin-token-file`): with one, every endpoint but
//! `/healthz` and `/readyz` (which the kubelet probes without credentials) needs
//! `Authorization: Bearer TOKEN`. The token is compared in constant time.

use std::path::{Path, PathBuf};

use http::HeaderValue;
use subtle::ConstantTimeEq;

/// The fewest characters a token may have: a guessable one protects nothing.
pub const MIN_TOKEN_LEN: usize = 16;

/// Endpoints open without the token.
pub const OPEN_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the admin token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the admin token file {path} holds {len} characters; a token needs at least {MIN_TOKEN_LEN} (printable, no spaces), such as the output of `head -c 32 /dev/urandom | base64`"
    )]
    TooShort { path: PathBuf, len: usize },
    #[error(
        "the admin token file {path} holds characters a header cannot carry: use printable ASCII without spaces"
    )]
    Unprintable { path: PathBuf },
}

/// A bearer token the admin server asks for.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// The token in `path`, without the line end a file usually has.
    pub fn read(path: &Path) -> Result<Token, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_owned(),
            source,
        })?;
        Token::new(text.trim(), path)
    }

    fn new(token: &str, path: &Path) -> Result<Token, TokenError> {
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::Unprintable {
                path: path.to_owned(),
            });
        }
        if token.len() < MIN_TOKEN_LEN {
            return Err(TokenError::TooShort {
                path: path.to_owned(),
                len: token.len(),
            });
        }
        Ok(Token(token.to_owned()))
    }

    /// The token, to send to peers.
    pub fn value(&self) -> &str {
        &self.0
    }

    /// Whether an `Authorization` field carries this token (scheme `Bearer`, any case).
    pub fn accepts(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(value) = authorization.map(HeaderValue::as_bytes) else {
            return false;
        };
        let Some((scheme, credentials)) = value.split_at_checked(7) else {
            return false;
        };
        let credentials = credentials.trim_ascii();
        scheme.eq_ignore_ascii_case(b"bearer ") && bool::from(credentials.ct_eq(self.0.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_token_itself_is_accepted() {
        let token = Token::new("s3cret-s3cret-s3cret", Path::new("t")).expect("a token");
        let accepts = |v: &str| token.accepts(Some(&HeaderValue::from_str(v).expect("value")));
        assert!(accepts("Bearer s3cret-s3cret-s3cret"));
        assert!(accepts("bearer s3cret-s3cret-s3cret"));
        assert!(!accepts("Bearer s3cret-s3cret-s3crex"));
        assert!(!accepts("Bearer s3cret-s3cret-s3cret-and-more"));
        assert!(!accepts("Bearer s3cret"));
        assert!(!accepts("Basic s3cret-s3cret-s3cret"));
        assert!(!accepts("Bearer"));
        assert!(!token.accepts(None));
    }

    #[test]
    fn a_short_or_unprintable_token_is_refused_with_a_reason() {
        let e = Token::new("short", Path::new("/etc/t")).expect_err("too short");
        assert!(e.to_string().contains("holds 5 characters"), "{e}");
        let e = Token::new("has a space in it, long enough", Path::new("t")).expect_err("space");
        assert!(e.to_string().contains("printable ASCII"), "{e}");
    }
}
