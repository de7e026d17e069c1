//! One canonical form of a request path, used for every decision about the request: routing,
//! its price, free paths and what the reverse proxy forwards (ADR 0013).
//!
//! A path is canonical when it has no dot segments, no empty segments (`//`), and every octet
//! that needs no escaping is written plainly, everything else as upper-case `%XX`. A request
//! whose path cannot be brought to that form is refused (`400`): an encoded slash or
//! backslash (`%2F`, `%5C`: a segment boundary to some servers and not to others), an encoded
//! NUL or control character, a broken escape, or `..` above the root.

use axum::http::uri::{PathAndQuery, Uri};

/// Why a path has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("the path must start with /")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("a broken percent escape in the path")]
    BadEscape,
    /// `%2F` or `%5C` (an encoded `/` or `\`), or a raw `\`.
    #[error("an encoded slash or a backslash in the path")]
    EncodedSeparator,
    /// An encoded NUL or control character.
    #[error("a control character in the path")]
    ControlCharacter,
    /// `..` above the root.
    #[error("the path climbs above the root")]
    AboveRoot,
    /// A `.` or `..` segment with a `;` parameter (`..;`): a dot segment to some servers.
    #[error("a dot segment with a parameter in the path")]
    DotSegmentParameter,
}

/// The canonical form of `path` (no query): dot segments resolved (RFC 3986 §5.2.4), empty
/// segments dropped, escapes decoded and re-encoded one way. A trailing `/` is kept.
///
/// # Errors
/// [`PathError`] when the path has no canonical form.
pub fn canonical_path(path: &str) -> Result<String, PathError> {
    let rest = path.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    let mut segments: Vec<Vec<u8>> = Vec::new();
    let mut trailing_slash = false;
    for raw in rest.split('/') {
        let segment = decode(raw)?;
        trailing_slash = false;
        match segment.as_slice() {
            b"" => trailing_slash = true,
            b"." => trailing_slash = true,
            b".." => {
                segments.pop().ok_or(PathError::AboveRoot)?;
                trailing_slash = true;
            }
            _ if matches!(segment.split(|b| *b == b';').next(), Some(b"." | b"..")) => {
                return Err(PathError::DotSegmentParameter)
            }
            _ => segments.push(segment),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        encode_into(s, &mut out);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

/// `uri` with its path in canonical form and its query untouched.
///
/// # Errors
/// [`PathError`] when the path has no canonical form.
pub fn canonical_uri(uri: &Uri) -> Result<Uri, PathError> {
    let path = canonical_path(uri.path())?;
    if path == uri.path() {
        return Ok(uri.clone());
    }
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = uri.clone().into_parts();
    // The canonical path is made of pchars and `/` only, so it always parses.
    parts.path_and_query = Some(PathAndQuery::try_from(pq).map_err(|_| PathError::BadEscape)?);
    Uri::from_parts(parts).map_err(|_| PathError::BadEscape)
}

fn decode(segment: &str) -> Result<Vec<u8>, PathError> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
                let hi = hex_digit(hex[0]).ok_or(PathError::BadEscape)?;
                let lo = hex_digit(hex[1]).ok_or(PathError::BadEscape)?;
                i += 3;
                let b = hi << 4 | lo;
                if b == b'/' {
                    return Err(PathError::EncodedSeparator);
                }
                b
            }
            b => {
                i += 1;
                b
            }
        };
        if b == b'\\' {
            return Err(PathError::EncodedSeparator);
        }
        if b < 0x20 || b == 0x7f {
            return Err(PathError::ControlCharacter);
        }
        out.push(b);
    }
    Ok(out)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 `pchar`s that are written plainly: unreserved, sub-delims, `:` and `@`.
fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b)
}

fn encode_into(segment: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in segment {
        if plain(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms() {
        let ok = |p: &str| canonical_path(p).unwrap_or_else(|e| format!("error: {e}"));
        assert_eq!(ok("/"), "/");
        assert_eq!(ok("/a/b"), "/a/b");
        assert_eq!(ok("/a/b/"), "/a/b/");
        assert_eq!(ok("/public/../secret.txt"), "/secret.txt");
        assert_eq!(ok("/public/%2e%2e/secret.txt"), "/secret.txt");
        assert_eq!(ok("/public/.%2E/secret.txt"), "/secret.txt");
        assert_eq!(ok("/public/./x"), "/public/x");
        assert_eq!(ok("//secret.txt"), "/secret.txt");
        assert_eq!(ok("/a//b///c"), "/a/b/c");
        assert_eq!(ok("/a/.."), "/");
        assert_eq!(ok("/a/b/.."), "/a/");
        assert_eq!(ok("/sec%72et"), "/secret");
        assert_eq!(ok("/a%20b"), "/a%20b");
        assert_eq!(ok("/a%c3%a9"), "/a%C3%A9");
        assert_eq!(ok("/x:y@z"), "/x:y@z");
        for bad in ["/..", "/../x", "/a/../../x", "/%2e%2e/x"] {
            assert_eq!(canonical_path(bad), Err(PathError::AboveRoot), "{bad}");
        }
        for bad in ["/public/..%2fsecret", "/public%2F..%2Fsecret", "/a%5cb", "/a\\b"] {
            assert_eq!(canonical_path(bad), Err(PathError::EncodedSeparator), "{bad}");
        }
        assert_eq!(canonical_path("/public/..;/secret"), Err(PathError::DotSegmentParameter));
        assert_eq!(canonical_path("/public/.%3B/x"), Err(PathError::DotSegmentParameter));
        assert_eq!(ok("/a;b/c"), "/a;b/c");
        assert_eq!(canonical_path("/a%00"), Err(PathError::ControlCharacter));
        assert_eq!(canonical_path("/a%0a"), Err(PathError::ControlCharacter));
        assert_eq!(canonical_path("/a%2"), Err(PathError::BadEscape));
        assert_eq!(canonical_path("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(canonical_path("a"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn canonical_is_a_fixed_point() {
        for p in ["/public/../secret.txt", "/a%c3%a9//b/./", "/sec%72et?x", "/~user/x%2a"] {
            if let Ok(c) = canonical_path(p) {
                assert_eq!(canonical_path(&c).as_deref(), Ok(c.as_str()), "{p}");
            }
        }
    }

    #[test]
    fn uris_keep_their_query() {
        let uri: Uri = "/public/../api?x=1&y=%2e%2e".parse().unwrap_or_default();
        let c = canonical_uri(&uri).unwrap_or_default();
        assert_eq!(c.path(), "/api");
        assert_eq!(c.query(), Some("x=1&y=%2e%2e"));
    }
}
