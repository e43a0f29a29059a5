//! Loading StarSystem and ServerLayout YAML outside Kubernetes (`starmesh local`, tests,
//! tools) with the same field paths the operator reports, using `serde-saphyr` (maintained;
//! `serde_yaml` is deprecated).
//!
//! Hostile input is bounded before and during parsing: the text is refused above
//! [`MAX_INPUT_BYTES`] before any parsing, and the parser runs under a budget (nesting depth,
//! events, aliases), so a billion-laughs document or deep nesting fails cleanly instead of
//! exhausting memory or the stack. Nothing here panics on any input.
//!
//! A file may hold several documents (`---`), of either kind, in any order.

use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::{GROUP, ServerLayout, StarSystem, VERSION};

/// Largest input accepted, in bytes. The API server's own request limit is about 1.5 MiB
/// and a real star system is a few KiB, so 1 MiB is generous and still cheap to parse.
pub const MAX_INPUT_BYTES: usize = 1 << 20;

/// Deepest nesting of YAML collections accepted; the resources nest about 6 deep.
pub const MAX_DEPTH: usize = 32;

/// `apiVersion` of every starmesh resource.
pub fn api_version() -> String {
    format!("{GROUP}/{VERSION}")
}

/// Why a text could not be loaded: where (document, line, column), which field, a machine
/// reason (one of [`load_reason`]), and a sentence for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// 1-based index of the document within the file (0 when the whole input is refused).
    pub document: usize,
    /// 1-based line in the whole input, when known.
    pub line: Option<u64>,
    /// 1-based column, when known.
    pub column: Option<u64>,
    /// JSON path of the offending field (`spec.locations[2].radius`), or `""` for the
    /// document as a whole.
    pub field: String,
    /// CamelCase machine reason.
    pub reason: &'static str,
    pub message: String,
}

/// Machine reasons of [`LoadError`].
pub mod load_reason {
    /// The input is larger than [`super::MAX_INPUT_BYTES`].
    pub const TOO_LARGE: &str = "TooLarge";
    /// Not well-formed YAML, or over the parser's budget.
    pub const INVALID_YAML: &str = "InvalidYaml";
    /// Well-formed YAML that does not fit the resource's type (missing field, a string
    /// where a number belongs, an unknown enum value).
    pub const INVALID_FIELD: &str = "InvalidField";
    pub const WRONG_API_VERSION: &str = "WrongApiVersion";
    pub const WRONG_KIND: &str = "WrongKind";
    /// No document in the input (or not the one expected).
    pub const NO_DOCUMENT: &str = "NoDocument";
    /// More than one document where one was expected.
    pub const MULTIPLE_DOCUMENTS: &str = "MultipleDocuments";
    /// The file could not be read.
    pub const IO: &str = "Io";
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.document > 0 {
            write!(f, "document {}", self.document)?;
            if let (Some(l), Some(c)) = (self.line, self.column) {
                write!(f, ", line {l} column {c}")?;
            }
            write!(f, ": ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        write!(f, "{} ({})", self.message, self.reason)
    }
}

impl std::error::Error for LoadError {}

/// A loaded resource of either kind.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Resource {
    StarSystem(StarSystem),
    ServerLayout(ServerLayout),
}

impl Resource {
    /// `metadata.name`, or `""` when absent.
    pub fn name(&self) -> &str {
        let meta = match self {
            Resource::StarSystem(s) => &s.metadata,
            Resource::ServerLayout(l) => &l.metadata,
        };
        meta.name.as_deref().unwrap_or_default()
    }
}

/// Loads the single StarSystem in `text`.
pub fn load_star_system(text: &str) -> Result<StarSystem, LoadError> {
    match single(text)? {
        Resource::StarSystem(s) => Ok(s),
        Resource::ServerLayout(_) => Err(whole(
            1,
            load_reason::WRONG_KIND,
            "kind",
            "expected kind StarSystem, found ServerLayout".into(),
        )),
    }
}

/// Loads the single ServerLayout in `text`.
pub fn load_server_layout(text: &str) -> Result<ServerLayout, LoadError> {
    match single(text)? {
        Resource::ServerLayout(l) => Ok(l),
        Resource::StarSystem(_) => Err(whole(
            1,
            load_reason::WRONG_KIND,
            "kind",
            "expected kind ServerLayout, found StarSystem".into(),
        )),
    }
}

fn single(text: &str) -> Result<Resource, LoadError> {
    let mut all = load_resources(text)?;
    if all.len() > 1 {
        return Err(whole(
            2,
            load_reason::MULTIPLE_DOCUMENTS,
            "",
            format!("expected one document, found {}", all.len()),
        ));
    }
    all.pop()
        .ok_or_else(|| whole(0, load_reason::NO_DOCUMENT, "", "the input holds no document".into()))
}

/// Loads every document of `text` (StarSystems and ServerLayouts in any order, empty
/// documents skipped), stopping at the first problem.
pub fn load_resources(text: &str) -> Result<Vec<Resource>, LoadError> {
    if text.len() > MAX_INPUT_BYTES {
        return Err(whole(
            0,
            load_reason::TOO_LARGE,
            "",
            format!("the input is {} bytes; at most {MAX_INPUT_BYTES} are accepted", text.len()),
        ));
    }
    let mut out = Vec::new();
    for (n, doc) in split_documents(text).into_iter().enumerate() {
        out.push(load_document(n + 1, doc)?);
    }
    Ok(out)
}

/// Reads and loads a file, refusing it by its size before reading it whole.
pub fn load_path(path: &Path) -> Result<Vec<Resource>, LoadError> {
    let io = |e: std::io::Error| {
        whole(0, load_reason::IO, "", format!("cannot read {}: {e}", path.display()))
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut text = String::new();
    // Read one byte past the bound so an oversized file is detected without reading it all.
    file.take(MAX_INPUT_BYTES as u64 + 1).read_to_string(&mut text).map_err(io)?;
    load_resources(&text)
}

fn whole(document: usize, reason: &'static str, field: &str, message: String) -> LoadError {
    LoadError { document, line: None, column: None, field: field.into(), reason, message }
}

/// One document of the input: its text and the 0-based line where it starts.
struct Document<'a> {
    text: &'a str,
    first_line: u64,
}

/// Splits at document-start markers (`---` at the start of a line, followed by a blank or
/// the end of the line). YAML forbids such a line inside any content, quoted or block, so
/// this split is exact, and parsing each piece alone keeps memory per document bounded
/// and lets each piece be read as its own kind. Pieces with no content are dropped.
fn split_documents(text: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 0u64;
    let mut offset = 0usize;
    for (line_no, line) in text.split_inclusive('\n').enumerate() {
        let is_marker = line.starts_with("---")
            && line[3..]
                .chars()
                .next()
                .is_none_or(|c| c == ' ' || c == '\t' || c == '\r' || c == '\n');
        if is_marker && offset > start {
            docs.push(Document { text: &text[start..offset], first_line: start_line });
            start = offset;
            start_line = line_no as u64;
        } else if is_marker {
            start_line = line_no as u64;
        }
        offset += line.len();
    }
    docs.push(Document { text: &text[start..], first_line: start_line });
    docs.into_iter().filter(|d| has_content(d.text)).collect()
}

fn has_content(text: &str) -> bool {
    text.lines().any(|l| {
        let t = l.trim();
        !(t.is_empty() || t.starts_with('#') || t.starts_with('%') || t == "---" || t == "...")
    })
}

/// Just enough of a document to pick its type.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
}

fn options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget.max_events = 200_000;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_nodes = 100_000;
    budget.max_total_scalar_bytes = MAX_INPUT_BYTES;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.with_snippet = false;
    options
}

fn load_document(number: usize, doc: Document<'_>) -> Result<Resource, LoadError> {
    let header: Header = parse(number, &doc)?;
    let expected = api_version();
    match header.api_version.as_deref() {
        Some(v) if v == expected => {}
        found => {
            return Err(whole(
                number,
                load_reason::WRONG_API_VERSION,
                "apiVersion",
                format!("apiVersion is {found:?}; expected {expected:?}"),
            ));
        }
    }
    match header.kind.as_deref() {
        Some("StarSystem") => parse(number, &doc).map(Resource::StarSystem),
        Some("ServerLayout") => parse(number, &doc).map(Resource::ServerLayout),
        found => Err(whole(
            number,
            load_reason::WRONG_KIND,
            "kind",
            format!("kind is {found:?}; expected \"StarSystem\" or \"ServerLayout\""),
        )),
    }
}

fn parse<T: DeserializeOwned>(number: usize, doc: &Document<'_>) -> Result<T, LoadError> {
    let mut path = None;
    let result = serde_saphyr::with_deserializer_from_str_with_options(doc.text, options(), |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            path = Some(e.path().to_string());
            e.into_inner()
        })
    });
    result.map_err(|e| {
        let location = e.location();
        let line = location.map(|l| l.line()).filter(|l| *l > 0);
        let column = location.map(|l| l.column()).filter(|_| line.is_some());
        // Malformed YAML is the document's fault, wherever the parser noticed it (its line
        // and column say where); a type mismatch is the field's, named by its path.
        let (reason, field) = if is_syntax(&e) {
            (load_reason::INVALID_YAML, String::new())
        } else {
            (load_reason::INVALID_FIELD, path.filter(|p| p != ".").unwrap_or_default())
        };
        LoadError {
            document: number,
            line: line.map(|l| l + doc.first_line),
            column,
            field,
            reason,
            message: e.without_snippet().to_string(),
        }
    })
}

fn is_syntax(e: &serde_saphyr::Error) -> bool {
    use serde_saphyr::Error as E;
    // Everything that is about a value not fitting its field; the rest (scanner errors, end
    // of input, budget, anchors, indentation) is about the YAML itself.
    !matches!(
        e.without_snippet(),
        E::Message { .. }
            | E::Unexpected { .. }
            | E::SerdeInvalidType { .. }
            | E::SerdeInvalidValue { .. }
            | E::SerdeInvalidLength { .. }
            | E::SerdeUnknownVariant { .. }
            | E::SerdeUnknownField { .. }
            | E::SerdeMissingField { .. }
            | E::InvalidScalar { .. }
            | E::NonFiniteFloat { .. }
            | E::NullIntoString { .. }
            | E::InvalidBooleanStrict { .. }
            | E::DuplicateMappingKey { .. }
            | E::TaggedEnumMismatch { .. }
            | E::UnexpectedValueForUnitEnumVariant { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYSTEM: &str = "apiVersion: starmesh.dev/v1alpha1
kind: StarSystem
metadata:
  name: tiny
spec:
  star: {name: sun, radius: 1000}
  locations:
    - name: rock
      kind: planet
      orbit: {radius: 100000}
      radius: 5000
";

    const LAYOUT: &str = "apiVersion: starmesh.dev/v1alpha1
kind: ServerLayout
metadata:
  name: tiny
spec:
  systemRef: tiny
  servers:
    - name: all
      territories: [rock, deep-space]
";

    #[test]
    fn loads_one_of_each_and_applies_defaults() {
        let s = load_star_system(SYSTEM).expect("system loads");
        assert_eq!(s.spec.locations.len(), 1);
        let l = load_server_layout(LAYOUT).expect("layout loads");
        assert_eq!(l.spec.tick_rate, 30);
        assert_eq!(l.spec.shards, 1);
    }

    #[test]
    fn loads_several_documents_in_any_order() {
        let text = format!("# leading comment\n---\n{LAYOUT}---\n{SYSTEM}\n---\n# trailing\n");
        let all = load_resources(&text).expect("loads");
        assert!(matches!(all[0], Resource::ServerLayout(_)));
        assert!(matches!(all[1], Resource::StarSystem(_)));
        assert_eq!(all[1].name(), "tiny");
    }

    #[test]
    fn a_type_error_names_field_line_and_column() {
        let text = format!("{LAYOUT}---\n{}", SYSTEM.replace("radius: 5000", "radius: huge"));
        let e = load_resources(&text).expect_err("must fail");
        assert_eq!(e.reason, load_reason::INVALID_FIELD);
        assert_eq!(e.field, "spec.locations[0].radius");
        assert_eq!(e.document, 2);
        // The layout is 9 lines, the marker 1, the bad line is the 11th of the system.
        assert_eq!(e.line, Some(21), "{e}");
        assert!(e.to_string().contains("spec.locations[0].radius"), "{e}");
    }

    #[test]
    fn a_missing_field_is_named() {
        let e =
            load_star_system(&SYSTEM.replace("      radius: 5000\n", "")).expect_err("must fail");
        assert_eq!(e.reason, load_reason::INVALID_FIELD);
        assert!(e.field.starts_with("spec.locations[0]"), "{e:?}");
        assert!(e.message.contains("radius"), "{e:?}");
    }

    #[test]
    fn an_unknown_enum_value_is_named() {
        let e = load_star_system(&SYSTEM.replace("kind: planet", "kind: comet"))
            .expect_err("must fail");
        assert_eq!(e.field, "spec.locations[0].kind", "{e:?}");
    }

    #[test]
    fn wrong_kind_and_api_version_are_refused() {
        let e = load_star_system(&SYSTEM.replace("kind: StarSystem", "kind: Planet"))
            .expect_err("kind");
        assert_eq!((e.reason, e.field.as_str()), (load_reason::WRONG_KIND, "kind"));
        let e = load_star_system(&SYSTEM.replace("v1alpha1", "v1")).expect_err("version");
        assert_eq!((e.reason, e.field.as_str()), (load_reason::WRONG_API_VERSION, "apiVersion"));
        let e = load_star_system(LAYOUT).expect_err("layout is not a system");
        assert_eq!(e.reason, load_reason::WRONG_KIND);
        let e = load_star_system(&format!("{SYSTEM}---\n{SYSTEM}")).expect_err("two");
        assert_eq!(e.reason, load_reason::MULTIPLE_DOCUMENTS);
        let e = load_star_system("# nothing\n").expect_err("empty");
        assert_eq!(e.reason, load_reason::NO_DOCUMENT);
    }

    #[test]
    fn truncated_and_garbage_input_fail_cleanly() {
        for cut in 0..SYSTEM.len() {
            if SYSTEM.is_char_boundary(cut) {
                let _ = load_resources(&SYSTEM[..cut]);
            }
        }
        for garbage in [
            "{{{{",
            "]]]",
            ": : :",
            "\u{0}\u{1}\u{2}",
            "key: [unterminated",
            "\"unterminated",
            "- a\n- b\n",
            "42",
            "apiVersion: starmesh.dev/v1alpha1\nkind: StarSystem\nspec: 3\n",
            "apiVersion: [1]\n",
            "*undefined_alias\n",
            "\t\tapiVersion: x",
        ] {
            assert!(load_resources(garbage).is_err() || garbage.trim().is_empty(), "{garbage:?}");
        }
    }

    #[test]
    fn huge_input_is_refused_before_parsing() {
        let text = format!("{SYSTEM}#{}\n", "x".repeat(MAX_INPUT_BYTES));
        let e = load_resources(&text).expect_err("too large");
        assert_eq!(e.reason, load_reason::TOO_LARGE);
    }

    #[test]
    fn deep_nesting_and_alias_bombs_fail_cleanly() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(load_resources(&deep).expect_err("deep").reason, load_reason::INVALID_YAML);
        let deep_block: String = (0..2000).map(|i| format!("{}a:\n", " ".repeat(i))).collect();
        assert!(load_resources(&deep_block).is_err());
        let mut bomb = String::from(
            "apiVersion: starmesh.dev/v1alpha1\nkind: StarSystem\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n",
        );
        for i in 1..10 {
            let prev = format!("*a{}", i - 1);
            bomb.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
        }
        assert!(load_resources(&bomb).is_err());
    }

    #[test]
    fn documents_split_only_at_markers() {
        let docs = split_documents("a: 1\n--- # c\nb: '---'\n----\n---\n");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].first_line, 1);
        assert!(docs[1].text.contains("----"));
    }
}
