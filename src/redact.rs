//! What may leave the process in status and Events: a store's answer only as a bounded
//! excerpt, with control characters flattened and no URL's credentials.
//!
//! Status and Events are readable by everyone who may read the migration, which is
//! more people than may read the stores; an error body copied verbatim could carry a
//! tenant's data, a token echoed by a proxy, or megabytes of HTML.

/// Longest message written to a status field (Events are cut at 1000 characters by
/// the controller, the API server's limit being 1 KiB).
pub const STATUS_MESSAGE_CHARS: usize = 1024;

/// `text` with every `scheme://user:password@host` written `scheme://***@host`,
/// control characters as spaces, and at most `max` characters (an ellipsis and the
/// number of characters left out mark a cut).
pub fn excerpt(text: &str, max: usize) -> String {
    let clean: String = without_userinfo(text)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let total = clean.chars().count();
    if total <= max {
        return clean;
    }
    let mut cut: String = clean.chars().take(max).collect();
    cut.push_str(&format!("… ({} more characters)", total - max));
    cut
}

/// A message for a status field: [`excerpt`] at [`STATUS_MESSAGE_CHARS`].
pub fn for_status(text: &str) -> String {
    excerpt(text, STATUS_MESSAGE_CHARS)
}

/// Removes the user-info part of every URL in `text`.
fn without_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The authority ends at the first character that cannot be part of it.
        let end = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace() || "\"'<>`,;)]}".contains(c))
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials_and_nothing_else() {
        let cases = [
            (
                "GET http://agent:hunter2@api:8000/tenants/x/config answered 500",
                "GET http://***@api:8000/tenants/x/config answered 500",
            ),
            (
                "redis://default@r:6379/0 and rediss://u:p@h",
                "redis://***@r:6379/0 and rediss://***@h",
            ),
            ("bolt://g:7687 refused", "bolt://g:7687 refused"),
            ("mail me at a@b.c", "mail me at a@b.c"),
            ("\"http://u:p@h\"", "\"http://***@h\""),
        ];
        for (text, want) in cases {
            assert_eq!(excerpt(text, 1000), want);
        }
    }

    #[test]
    fn long_bodies_are_cut_and_flattened() {
        let body = format!("line1\nline2\x1b[31m{}", "x".repeat(5000));
        let e = excerpt(&body, 100);
        assert!(e.starts_with("line1 line2 [31m"), "{e}");
        assert!(e.ends_with("… (4916 more characters)"), "{e}");
        assert!(e.chars().count() < 130);
        assert!(for_status(&"é".repeat(3000)).chars().count() < STATUS_MESSAGE_CHARS + 40);
    }
}
