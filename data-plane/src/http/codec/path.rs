//! Request paths normalized before routing, so that no spelling of a path can match one route
//! while the endpoint resolves it to a path another route owns (Envoy's edge guide):
//!
//! 1. percent-encoded unreserved characters decoded (`%41` → `A`, `%2E` → `.`), other escapes
//!    upper-cased (`%2f` → `%2F`), a malformed escape refused;
//! 2. an encoded `/` or `\` (and a bare `\`) kept opaque, refused, or decoded with a redirect to
//!    the decoded path, as the listener says (refused by default);
//! 3. dot segments removed (RFC 3986 §5.2.4), `.;x` and `..;x` counted as dot segments (servlet
//!    containers read them so);
//! 4. runs of `/` merged into one, unless the listener keeps them.
//!
//! The route is chosen on the result without `;` parameters (which servlet containers drop), and
//! exactly the result goes upstream. A path that needs none of it is borrowed, not copied.

use std::borrow::Cow;

pub use crate::table::{EscapedSlashes, PathPolicy};

/// Why a path is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request target is not a path")]
    NotOriginForm,
    #[error("malformed percent-encoding in the path")]
    BadEscape,
    #[error("encoded slash or backslash in the path")]
    EscapedSlash,
}

/// What to do with a request's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Normalized<'a> {
    /// Route on this path (without its `;` parameters) and forward exactly it.
    Path(Cow<'a, str>),
    /// Redirect the client here (an encoded slash decoded, with the listener's policy).
    Redirect(String),
}

/// Normalizes `path` (the request target's path, no query) under `policy`.
pub fn normalize(path: &str, policy: PathPolicy) -> Result<Normalized<'_>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    if !needs_work(path, policy.merge_slashes) {
        return Ok(Normalized::Path(Cow::Borrowed(path)));
    }
    let (decoded, redirect) = decode(path, policy.escaped_slashes)?;
    let clean = remove_dot_segments(&decoded, policy.merge_slashes);
    Ok(if redirect {
        Normalized::Redirect(clean)
    } else if clean == path {
        Normalized::Path(Cow::Borrowed(path))
    } else {
        Normalized::Path(Cow::Owned(clean))
    })
}

/// The path routes are matched on: `;` parameters dropped from every segment.
pub fn without_params(path: &str) -> Cow<'_, str> {
    if !path.contains(';') {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(segment.split(';').next().unwrap_or(""));
    }
    Cow::Owned(out)
}

/// Whether anything of [`normalize`] could change `path`: an escape, a backslash, a dot segment
/// (with or without parameters), or (when merging) an empty segment. One pass over the bytes:
/// this runs on every request.
fn needs_work(path: &str, merge_slashes: bool) -> bool {
    // The segment being read: its length, the length of its part before any `;`, and whether
    // that part is dots only.
    let (mut len, mut bare_len, mut bare_dots, mut in_params) = (0, 0, true, false);
    for &c in &path.as_bytes()[1..] {
        match c {
            b'%' | b'\\' => return true,
            b'/' => {
                if (bare_dots && (1..=2).contains(&bare_len)) || (merge_slashes && len == 0) {
                    return true;
                }
                (len, bare_len, bare_dots, in_params) = (0, 0, true, false);
                continue;
            }
            b';' => in_params = true,
            c if !in_params => {
                bare_len += 1;
                bare_dots &= c == b'.';
            }
            _ => {}
        }
        len += 1;
    }
    bare_dots && (1..=2).contains(&bare_len)
}

fn unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Decodes unreserved escapes, upper-cases the others, applies the slash policy. Returns the
/// result and whether the client must be redirected to it.
fn decode(path: &str, slashes: EscapedSlashes) -> Result<(String, bool), PathError> {
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut redirect = false;
    let mut slash = |encoded: &str, out: &mut String| match slashes {
        EscapedSlashes::Keep => {
            out.push_str(encoded);
            Ok(())
        }
        EscapedSlashes::Reject => Err(PathError::EscapedSlash),
        EscapedSlashes::DecodeAndRedirect => {
            redirect = true;
            out.push('/');
            Ok(())
        }
    };
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let (Some(hi), Some(lo)) = (b.get(i + 1).and_then(|&c| hex(c)), b.get(i + 2).and_then(|&c| hex(c)))
                else {
                    return Err(PathError::BadEscape);
                };
                let v = hi << 4 | lo;
                match v {
                    b'/' => slash("%2F", &mut out)?,
                    b'\\' => slash("%5C", &mut out)?,
                    v if unreserved(v) => out.push(v as char),
                    v => {
                        out.push('%');
                        out.push(char::from(b"0123456789ABCDEF"[usize::from(v >> 4)]));
                        out.push(char::from(b"0123456789ABCDEF"[usize::from(v & 15)]));
                    }
                }
                i += 3;
            }
            b'\\' => {
                slash("\\", &mut out)?;
                i += 1;
            }
            _ => {
                // Everything else is ASCII (the URI parser allows nothing more): copy the run.
                let end = b[i..].iter().position(|&c| c == b'%' || c == b'\\').map_or(b.len(), |p| i + p);
                out.push_str(&path[i..end]);
                i = end;
            }
        }
    }
    Ok((out, redirect))
}

/// RFC 3986 §5.2.4 on an absolute path, segment by segment; `merge` drops empty segments but a
/// trailing one (`/a/` keeps its slash).
fn remove_dot_segments(path: &str, merge: bool) -> String {
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, segment) in segments.iter().enumerate() {
        let bare = segment.split(';').next().unwrap_or("");
        if bare == "." || bare == ".." {
            if bare == ".." {
                out.pop();
            }
            if i == last {
                out.push("");
            }
            continue;
        }
        if merge && segment.is_empty() && i != last {
            continue;
        }
        out.push(segment);
    }
    let mut s = String::with_capacity(path.len());
    for segment in &out {
        s.push('/');
        s.push_str(segment);
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn norm(path: &str) -> Result<String, PathError> {
        norm_with(path, PathPolicy::default())
    }

    fn norm_with(path: &str, policy: PathPolicy) -> Result<String, PathError> {
        normalize(path, policy).map(|n| match n {
            Normalized::Path(p) => p.into_owned(),
            Normalized::Redirect(to) => format!("redirect {to}"),
        })
    }

    #[test]
    fn dot_segments_and_escapes() {
        assert_eq!(norm("/api/../admin").unwrap(), "/admin");
        assert_eq!(norm("/api/%2e%2E/admin").unwrap(), "/admin");
        assert_eq!(norm("/api/.%2e/admin").unwrap(), "/admin");
        assert_eq!(norm("/a/./b/.").unwrap(), "/a/b/");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/../../etc").unwrap(), "/etc");
        assert_eq!(norm("/%61dmin").unwrap(), "/admin");
        assert_eq!(norm("/a%7e%5f").unwrap(), "/a~_");
        assert_eq!(norm("/a%3fb%c3%a9").unwrap(), "/a%3Fb%C3%A9");
        assert_eq!(norm("/api/..;/admin").unwrap(), "/admin");
        assert_eq!(norm("/api/.;x=1/v").unwrap(), "/api/v");
        assert_eq!(norm("//admin").unwrap(), "/admin");
        assert_eq!(norm("/a//b///").unwrap(), "/a/b/");
        assert_eq!(norm("/").unwrap(), "/");
        assert_eq!(norm("/plain/file.txt").unwrap(), "/plain/file.txt");
        assert!(matches!(normalize("/plain/file.txt", PathPolicy::default()), Ok(Normalized::Path(Cow::Borrowed(_)))));
    }

    #[test]
    fn refusals() {
        assert_eq!(norm("*"), Err(PathError::NotOriginForm));
        assert_eq!(norm("admin"), Err(PathError::NotOriginForm));
        assert_eq!(norm("/a%2"), Err(PathError::BadEscape));
        assert_eq!(norm("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(norm("/api%2F..%2Fadmin"), Err(PathError::EscapedSlash));
        assert_eq!(norm("/a%5cb"), Err(PathError::EscapedSlash));
    }

    #[test]
    fn slash_policies() {
        let keep = PathPolicy { escaped_slashes: EscapedSlashes::Keep, ..PathPolicy::default() };
        assert_eq!(norm_with("/api%2f..%2fadmin", keep).unwrap(), "/api%2F..%2Fadmin");
        let redirect = PathPolicy { escaped_slashes: EscapedSlashes::DecodeAndRedirect, ..PathPolicy::default() };
        assert_eq!(norm_with("/api%2F..%2Fadmin", redirect).unwrap(), "redirect /admin");
        assert_eq!(norm_with("/a\\b", redirect).unwrap(), "redirect /a/b");
        let unmerged = PathPolicy { merge_slashes: false, ..PathPolicy::default() };
        assert_eq!(norm_with("//admin", unmerged).unwrap(), "//admin");
    }

    #[test]
    fn params_are_left_out_of_routing() {
        assert_eq!(without_params("/admin;jsessionid=1/x;a"), "/admin/x");
        assert!(matches!(without_params("/admin"), Cow::Borrowed(_)));
    }

    /// Every escape but `/` and `\` decoded.
    fn decode_all(path: &str) -> String {
        let mut decoded = Vec::new();
        let b = path.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() {
                let v = hex(b[i + 1]).unwrap() << 4 | hex(b[i + 2]).unwrap();
                if v != b'/' && v != b'\\' {
                    decoded.push(v);
                    i += 3;
                    continue;
                }
            }
            decoded.push(b[i]);
            i += 1;
        }
        String::from_utf8_lossy(&decoded).into_owned()
    }

    /// What a lenient endpoint makes of a path: decoded, then dot segments (with parameters)
    /// removed and slashes merged.
    fn endpoint_view(path: &str) -> String {
        remove_dot_segments(&decode_all(path), true)
    }

    proptest! {
        #[test]
        fn normalizing_is_idempotent_and_leaves_nothing_to_resolve(
            segments in proptest::collection::vec(
                prop_oneof![
                    Just(".".to_string()), Just("..".to_string()), Just("%2e".to_string()), Just("%2E%2e".to_string()),
                    Just("..;x".to_string()), Just("".to_string()), Just("%41".to_string()), Just("%7E".to_string()),
                    Just("%c3%a9".to_string()), Just("%3f".to_string()), "[a-z0-9._~;=-]{1,6}",
                ],
                0..8,
            ),
            trailing in any::<bool>(),
        ) {
            let mut path = format!("/{}", segments.join("/"));
            if trailing { path.push('/'); }
            // The fast check never skips work the full pass would do.
            if !needs_work(&path, true) {
                let (decoded, _) = decode(&path, EscapedSlashes::Reject).unwrap();
                prop_assert_eq!(remove_dot_segments(&decoded, true), path.clone());
            }
            let once = norm(&path).unwrap();
            prop_assert_eq!(norm(&once).unwrap(), once.clone(), "idempotent");
            prop_assert!(once.starts_with('/'));
            prop_assert!(!once.contains("//"));
            // Nothing is left for an endpoint to resolve, and what it makes of the raw path is
            // what was routed.
            prop_assert_eq!(endpoint_view(&once), decode_all(&once));
            prop_assert_eq!(endpoint_view(&path), decode_all(&once));
        }
    }
}
