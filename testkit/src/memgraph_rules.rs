//! What Memgraph accepts, as far as the graph phase's tests can check it on a Neo4j
//! server: the Cypher constructs each documented by Memgraph (with the page that
//! documents it), a reader that lists the constructs a query uses, and the rule that
//! index and constraint changes run only outside explicit transactions.
//!
//! Memgraph: "Index manipulation not allowed in multicommand transactions" (3.1 and
//! later: "Index manipulation is not allowed in multicommand transactions. ... please
//! use an implicit transaction") — `IndexInMulticommandTxException`, raised by
//! `PrepareIndexQuery` in memgraph/memgraph `src/query/interpreter.cpp`; the client
//! guides (https://memgraph.com/docs/client-libraries/python) say to run such
//! statements as auto-commit queries. Neo4j 4.4 runs them in a transaction, so only a
//! record of the Bolt messages shows the difference.

use crate::bolt_recorder::{BoltRequest, Connection};

const DOCS: &str = "https://memgraph.com/docs";

/// Constructs Memgraph documents, each with its documentation page under [`DOCS`].
pub const DOCUMENTED: &[(&str, &str)] = &[
    ("MATCH", "/querying/clauses/match"),
    ("OPTIONAL MATCH", "/querying/clauses/optional-match"),
    ("WHERE", "/querying/clauses/where"),
    ("AND", "/querying/clauses/where"),
    ("OR", "/querying/clauses/where"),
    ("IS NULL", "/querying/clauses/where"),
    ("WITH", "/querying/clauses/with"),
    ("ORDER BY", "/querying/clauses/order-by"),
    ("LIMIT", "/querying/clauses/limit"),
    ("RETURN", "/querying/clauses/return"),
    ("AS", "/querying/clauses/return"),
    ("MERGE", "/querying/clauses/merge"),
    ("SET", "/querying/clauses/set"),
    ("REMOVE", "/querying/clauses/remove"),
    ("UNWIND", "/querying/clauses/unwind"),
    ("IN", "/querying/expressions"),
    ("CREATE INDEX ON", "/fundamentals/indexes"),
    ("DROP INDEX ON", "/fundamentals/indexes"),
    ("count()", "/querying/functions"),
    ("min()", "/querying/functions"),
    ("max()", "/querying/functions"),
    ("properties()", "/querying/functions"),
    ("labels()", "/querying/functions"),
    ("coalesce()", "/querying/functions"),
    ("collect()", "/querying/functions"),
    ("any()", "/querying/functions"),
];

/// The documentation page of a documented construct.
pub fn doc_of(construct: &str) -> Option<String> {
    DOCUMENTED
        .iter()
        .find(|(c, _)| *c == construct)
        .map(|(_, page)| format!("{DOCS}{page}"))
}

/// Cypher's reserved words: a word of a query that is one of these is a construct.
const KEYWORDS: &[&str] = &[
    "ALL",
    "AND",
    "AS",
    "ASC",
    "ASCENDING",
    "ASSERT",
    "BY",
    "CALL",
    "CASE",
    "COMMIT",
    "CONSTRAINT",
    "CONTAINS",
    "CREATE",
    "CSV",
    "DELETE",
    "DESC",
    "DESCENDING",
    "DETACH",
    "DISTINCT",
    "DROP",
    "ELSE",
    "END",
    "ENDS",
    "EXISTS",
    "FOR",
    "FOREACH",
    "IN",
    "INDEX",
    "IS",
    "KEY",
    "LIMIT",
    "LOAD",
    "MATCH",
    "MERGE",
    "NODE",
    "NOT",
    "NULL",
    "ON",
    "OPTIONAL",
    "OR",
    "ORDER",
    "PERIODIC",
    "REMOVE",
    "REQUIRE",
    "RETURN",
    "SET",
    "SHOW",
    "SKIP",
    "STARTS",
    "THEN",
    "TRANSACTIONS",
    "UNION",
    "UNIQUE",
    "UNWIND",
    "USING",
    "WHEN",
    "WHERE",
    "WITH",
    "XOR",
    "YIELD",
];

/// Words that form one construct with the words after them.
const PHRASES: &[&[&str]] = &[
    &["OPTIONAL", "MATCH"],
    &["ORDER", "BY"],
    &["CREATE", "INDEX", "ON"],
    &["DROP", "INDEX", "ON"],
    &["IS", "NOT", "NULL"],
    &["IS", "NULL"],
];

/// The constructs `query` uses: clauses and operators (upper case, phrases joined by
/// a space) and functions (`name()`), without string literals, backtick-quoted names,
/// parameters and property keys.
pub fn constructs(query: &str) -> Vec<String> {
    let mut words: Vec<(String, bool)> = Vec::new(); // (word, followed by '(')
    let chars: Vec<char> = query.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' || c == '"' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '$' || c == '.' {
            // A parameter or a property key: skip the name after it.
            i += 1;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            // A map key (`{entity_id: …}`) is a name, not a word of the language.
            if chars.get(j) != Some(&':') || word.chars().next().is_some_and(char::is_uppercase) {
                words.push((word, chars.get(j) == Some(&'(')));
            }
        } else {
            i += 1;
        }
    }
    let mut out = Vec::new();
    let mut k = 0;
    while k < words.len() {
        let (w, call) = &words[k];
        let upper = w.to_uppercase();
        if *call && !KEYWORDS.contains(&upper.as_str()) {
            out.push(format!("{}()", w.to_lowercase()));
            k += 1;
            continue;
        }
        if !KEYWORDS.contains(&upper.as_str()) {
            k += 1;
            continue;
        }
        let phrase = PHRASES.iter().find(|p| {
            p.iter()
                .enumerate()
                .all(|(n, part)| words.get(k + n).is_some_and(|(w, _)| w.eq_ignore_ascii_case(part)))
        });
        match phrase {
            Some(p) => {
                out.push(p.join(" "));
                k += p.len();
            }
            None => {
                out.push(upper);
                k += 1;
            }
        }
    }
    out
}

/// Whether `query` changes the schema (indexes, constraints).
pub fn is_schema_statement(query: &str) -> bool {
    let c = constructs(query);
    c.first()
        .is_some_and(|f| f.starts_with("CREATE INDEX") || f.starts_with("DROP INDEX"))
        || c.iter().any(|x| x == "CONSTRAINT")
}

/// Breaches of Memgraph's rules in recorded connections: schema statements inside an
/// explicit transaction, constructs Memgraph does not document, and requests that
/// name no database or another than `database`.
pub fn violations(connections: &[Connection], database: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (n, conn) in connections.iter().enumerate() {
        let mut in_txn = false;
        for req in conn {
            match req {
                BoltRequest::Begin { db } => {
                    in_txn = true;
                    if db.as_deref() != Some(database) {
                        out.push(format!("connection {n}: BEGIN names database {db:?}"));
                    }
                }
                BoltRequest::Commit | BoltRequest::Rollback | BoltRequest::Reset => in_txn = false,
                BoltRequest::Run { query, db } => {
                    if is_schema_statement(query) && in_txn {
                        out.push(format!(
                            "connection {n}: schema statement inside an explicit transaction: {query}"
                        ));
                    }
                    if !in_txn && db.as_deref() != Some(database) {
                        out.push(format!(
                            "connection {n}: auto-commit RUN names database {db:?}: {query}"
                        ));
                    }
                    for c in constructs(query) {
                        if doc_of(&c).is_none() {
                            out.push(format!("connection {n}: {c} is not on the documented list: {query}"));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructs_are_read_from_queries() {
        let q = "MATCH (n:`a b`) WHERE n.entity_id > $after AND n.x IS NULL \
                 WITH n ORDER BY n.entity_id LIMIT $batch \
                 MERGE (m:`t` {entity_id: n.entity_id}) SET m = properties(n) \
                 RETURN count(m) AS c, max(n.entity_id) AS last";
        assert_eq!(
            constructs(q),
            [
                "MATCH",
                "WHERE",
                "AND",
                "IS NULL",
                "WITH",
                "ORDER BY",
                "LIMIT",
                "MERGE",
                "SET",
                "properties()",
                "RETURN",
                "count()",
                "AS",
                "max()",
                "AS"
            ]
        );
        assert_eq!(
            constructs("CALL { MATCH (n) RETURN n } IN TRANSACTIONS OF 10 ROWS"),
            ["CALL", "MATCH", "RETURN", "IN", "TRANSACTIONS"]
        );
        assert_eq!(constructs("RETURN 'MATCH (x)' AS s"), ["RETURN", "AS"]);
        assert!(is_schema_statement("CREATE INDEX ON :`x`(entity_id)"));
        assert!(!is_schema_statement("MATCH (n) RETURN n"));
        assert!(constructs("RETURN elementId(n)").iter().any(|c| doc_of(c).is_none()));
    }

    #[test]
    fn a_schema_statement_in_a_transaction_is_a_violation() {
        let db = Some("memgraph".to_owned());
        let conn = vec![
            BoltRequest::Begin { db: db.clone() },
            BoltRequest::Run {
                query: "CREATE INDEX ON :`t`(entity_id)".into(),
                db: None,
            },
            BoltRequest::Commit,
            BoltRequest::Run {
                query: "DROP INDEX ON :`s`(entity_id)".into(),
                db,
            },
        ];
        let v = violations(&[conn], "memgraph");
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("inside an explicit transaction"), "{v:?}");
    }
}
