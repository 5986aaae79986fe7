//! Parsing and validation of the submitted CSV (SPEC §1).
//!
//! The whole file is checked before anything is stored, and every problem is
//! reported at once with the line and column a person needs to fix it.

use std::collections::HashMap;

use serde::Serialize;

/// At most this many problems are reported for one file.
pub const MAX_REPORTED_ISSUES: usize = 100;
pub const MAX_PRODUCT_NAME_CHARS: usize = 256;
pub const MAX_URL_CHARS: usize = 2048;

#[derive(Clone, Copy, Debug)]
pub struct CsvLimits {
    pub max_rows: usize,
    pub max_images: usize,
    pub max_images_per_row: usize,
}

/// One problem in a submitted file. `line` is the 1-based line of the file
/// where the record starts; file-level problems have neither line nor column.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Issue {
    pub line: Option<u64>,
    pub column: Option<String>,
    pub message: String,
}

impl Issue {
    fn file(message: impl Into<String>) -> Self {
        Self {
            line: None,
            column: None,
            message: message.into(),
        }
    }

    fn at(line: u64, column: Option<Column>, message: impl Into<String>) -> Self {
        Self {
            line: Some(line),
            column: column.map(|c| c.name().to_owned()),
            message: message.into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedProduct {
    pub line: u64,
    pub serial_number: u64,
    pub product_name: String,
    pub urls: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedCsv {
    pub products: Vec<ParsedProduct>,
    pub warnings: Vec<String>,
}

impl ParsedCsv {
    pub fn image_count(&self) -> usize {
        self.products.iter().map(|p| p.urls.len()).sum()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Column {
    SerialNumber,
    ProductName,
    InputImageUrls,
}

impl Column {
    const ALL: [Column; 3] = [
        Column::SerialNumber,
        Column::ProductName,
        Column::InputImageUrls,
    ];

    /// The canonical header, as written in output CSVs and error reports.
    pub fn name(self) -> &'static str {
        match self {
            Column::SerialNumber => "S. No.",
            Column::ProductName => "Product Name",
            Column::InputImageUrls => "Input Image Urls",
        }
    }

    /// Accepted spellings, compared after [`normalize_header`].
    fn aliases(self) -> &'static [&'static str] {
        match self {
            Column::SerialNumber => &["sno", "serialno", "serialnumber", "srno", "slno", "serial"],
            Column::ProductName => &["productname", "product", "name"],
            Column::InputImageUrls => &[
                "inputimageurls",
                "inputimageurl",
                "imageurls",
                "imageurl",
                "inputurls",
                "urls",
            ],
        }
    }

    fn from_header(header: &str) -> Option<Column> {
        let norm = normalize_header(header);
        Column::ALL
            .into_iter()
            .find(|c| c.aliases().contains(&norm.as_str()))
    }
}

/// Lower-case, with whitespace, dots, underscores and hyphens removed, so
/// that `S. No.`, `S.No.`, `s no` and `Serial_Number` compare by their words.
fn normalize_header(header: &str) -> String {
    header
        .chars()
        .filter(|c| !(c.is_whitespace() || matches!(c, '.' | '_' | '-')))
        .flat_map(char::to_lowercase)
        .collect()
}

/// Parses and validates a whole file. Either every row is valid, or the
/// problems (the first [`MAX_REPORTED_ISSUES`]) are returned and nothing else.
pub fn parse(bytes: &[u8], limits: &CsvLimits) -> Result<ParsedCsv, Vec<Issue>> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let line = 1 + bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            return Err(vec![Issue::file(format!(
                "the file is not UTF-8 text (invalid byte at offset {}, line {line}); save it as UTF-8 CSV",
                e.valid_up_to()
            ))]);
        }
    };
    if text.trim().is_empty() {
        return Err(vec![Issue::file(
            "the file is empty; expected a header row and at least one product row",
        )]);
    }

    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut records = reader.records();
    let mut issues = Issues::default();
    let lines = LineIndex::new(text);

    // The header is the first record that is not blank.
    let (header_line, header) = loop {
        match records.next() {
            None => return Err(vec![Issue::file("the file has no header row")]),
            Some(Err(e)) => return Err(vec![csv_error_issue(&e, &lines)]),
            Some(Ok(r)) if is_blank(&r) => continue,
            Some(Ok(r)) => break (lines.line_of(&r), r),
        }
    };
    let layout = Layout::from_header(header_line, &header)?;

    let mut products = Vec::new();
    let mut seen_serials: HashMap<u64, u64> = HashMap::new();
    let mut rows = 0usize;
    let mut images = 0usize;
    for record in records {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                issues.push(csv_error_issue(&e, &lines));
                continue;
            }
        };
        if is_blank(&record) {
            continue;
        }
        rows += 1;
        if rows > limits.max_rows {
            // Counted to the end for the message; no need to validate more.
            continue;
        }
        if let Some(p) = layout.product(
            &record,
            lines.line_of(&record),
            limits,
            &mut seen_serials,
            &mut issues,
        ) {
            images += p.urls.len();
            products.push(p);
        }
    }

    let mut file_issues = Vec::new();
    if rows == 0 {
        file_issues.push(Issue::file("the file has a header row but no product rows"));
    }
    if rows > limits.max_rows {
        file_issues.push(Issue::file(format!(
            "the file has {rows} rows; at most {} are allowed per request: split it into several files",
            limits.max_rows
        )));
    }
    if images > limits.max_images {
        file_issues.push(Issue::file(format!(
            "the file lists {images} images; at most {} are allowed per request: split it into several files",
            limits.max_images
        )));
    }
    let mut all = file_issues;
    all.extend(issues.list);
    if !all.is_empty() {
        all.truncate(MAX_REPORTED_ISSUES);
        return Err(all);
    }
    Ok(ParsedCsv {
        products,
        warnings: layout.warnings,
    })
}

#[derive(Default)]
struct Issues {
    list: Vec<Issue>,
}

impl Issues {
    fn push(&mut self, issue: Issue) {
        // Keep a little more than reported so file-level problems fit first.
        if self.list.len() < MAX_REPORTED_ISSUES {
            self.list.push(issue);
        }
    }
}

/// Which field of a record holds which column.
struct Layout {
    index: HashMap<Column, usize>,
    width: usize,
    warnings: Vec<String>,
}

impl Layout {
    fn from_header(line: u64, header: &csv::StringRecord) -> Result<Layout, Vec<Issue>> {
        let mut index: HashMap<Column, usize> = HashMap::new();
        let mut issues = Vec::new();
        let mut warnings = Vec::new();
        for (i, name) in header.iter().enumerate() {
            match Column::from_header(name) {
                Some(col) => {
                    if let Some(first) = index.get(&col) {
                        issues.push(Issue::at(
                            line,
                            Some(col),
                            format!(
                                "column \"{}\" appears twice (fields {} and {}); keep one",
                                col.name(),
                                first + 1,
                                i + 1
                            ),
                        ));
                    } else {
                        index.insert(col, i);
                    }
                }
                None if name.trim().is_empty() => {
                    warnings.push(format!("column {} has no name and was ignored", i + 1))
                }
                None => warnings.push(format!(
                    "unknown column \"{}\" (column {}) was ignored",
                    name.trim(),
                    i + 1
                )),
            }
        }
        for col in Column::ALL {
            if !index.contains_key(&col) {
                issues.push(Issue::at(
                    line,
                    Some(col),
                    format!(
                        "the header has no \"{}\" column; the first row must name the columns \"S. No.\", \"Product Name\" and \"Input Image Urls\"",
                        col.name()
                    ),
                ));
            }
        }
        if issues.is_empty() {
            Ok(Layout {
                index,
                width: header.len(),
                warnings,
            })
        } else {
            Err(issues)
        }
    }

    fn field<'r>(&self, record: &'r csv::StringRecord, col: Column) -> &'r str {
        self.index
            .get(&col)
            .and_then(|&i| record.get(i))
            .unwrap_or("")
    }

    /// Validates one row; reports its problems and returns it only if valid.
    fn product(
        &self,
        record: &csv::StringRecord,
        line: u64,
        limits: &CsvLimits,
        seen_serials: &mut HashMap<u64, u64>,
        issues: &mut Issues,
    ) -> Option<ParsedProduct> {
        let before = issues.list.len();

        if record.len() < self.width {
            issues.push(Issue::at(
                line,
                None,
                format!(
                    "this row has {} fields but the header has {}",
                    record.len(),
                    self.width
                ),
            ));
            return None;
        }
        if record.iter().skip(self.width).any(|f| !f.trim().is_empty()) {
            issues.push(Issue::at(
                line,
                None,
                format!(
                    "this row has {} fields but the header has {}; put a list of URLs in double quotes: \"https://a.example/1.jpg,https://a.example/2.jpg\"",
                    record.len(),
                    self.width
                ),
            ));
            return None;
        }

        let serial_raw = self.field(record, Column::SerialNumber).trim();
        let serial_number = match serial_raw.parse::<u64>() {
            Ok(n) if n > 0 => {
                if let Some(first) = seen_serials.insert(n, line) {
                    seen_serials.insert(n, first);
                    issues.push(Issue::at(
                        line,
                        Some(Column::SerialNumber),
                        format!("S. No. {n} is already used on line {first}; serial numbers must be unique"),
                    ));
                }
                n
            }
            _ if serial_raw.is_empty() => {
                issues.push(Issue::at(
                    line,
                    Some(Column::SerialNumber),
                    "S. No. is empty; expected a positive integer",
                ));
                0
            }
            _ => {
                issues.push(Issue::at(
                    line,
                    Some(Column::SerialNumber),
                    format!(
                        "S. No. must be a positive integer, found \"{}\"",
                        truncate(serial_raw, 40)
                    ),
                ));
                0
            }
        };

        let product_name = self.field(record, Column::ProductName).trim();
        if product_name.is_empty() {
            issues.push(Issue::at(
                line,
                Some(Column::ProductName),
                "Product Name is empty",
            ));
        } else if product_name.chars().count() > MAX_PRODUCT_NAME_CHARS {
            issues.push(Issue::at(
                line,
                Some(Column::ProductName),
                format!(
                    "Product Name has {} characters; at most {MAX_PRODUCT_NAME_CHARS} are allowed",
                    product_name.chars().count()
                ),
            ));
        }

        let urls = split_urls(self.field(record, Column::InputImageUrls));
        if urls.is_empty() {
            issues.push(Issue::at(
                line,
                Some(Column::InputImageUrls),
                "Input Image Urls is empty; list at least one image URL",
            ));
        } else if urls.len() > limits.max_images_per_row {
            issues.push(Issue::at(
                line,
                Some(Column::InputImageUrls),
                format!(
                    "this row lists {} image URLs; at most {} are allowed per row",
                    urls.len(),
                    limits.max_images_per_row
                ),
            ));
        }
        for (i, url) in urls.iter().enumerate() {
            if let Err(why) = check_url_syntax(url) {
                issues.push(Issue::at(
                    line,
                    Some(Column::InputImageUrls),
                    format!("URL {} {why}", i + 1),
                ));
            }
        }

        (issues.list.len() == before).then(|| ParsedProduct {
            line,
            serial_number,
            product_name: product_name.to_owned(),
            urls: urls.into_iter().map(str::to_owned).collect(),
        })
    }
}

/// Splits a URL list on commas; whitespace and line breaks around entries and
/// empty entries (`a,,b`) are tolerated.
pub fn split_urls(field: &str) -> Vec<&str> {
    field
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// Checks that `raw` is an absolute `http`/`https` URL with a host, within
/// the length limit. Shared by image and webhook URLs.
pub fn check_url_syntax(raw: &str) -> Result<url::Url, String> {
    if raw.chars().count() > MAX_URL_CHARS {
        return Err(format!("is longer than {MAX_URL_CHARS} characters"));
    }
    if raw.chars().any(char::is_control) {
        return Err(format!(
            "\"{}\" contains control characters",
            truncate(raw, 80)
        ));
    }
    let url = url::Url::parse(raw)
        .map_err(|e| format!("\"{}\" is not an absolute URL ({e})", truncate(raw, 80)))?;
    // The URL standard the parser follows forgives `http:host`, `http:/host`
    // and `http:\\host`; what a person typed must also spell its scheme and
    // `//` plainly, so that the URL stored and shown is the one fetched.
    let spelled_plainly = ["http://", "https://"].iter().any(|prefix| {
        raw.get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
    });
    if !spelled_plainly || !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "\"{}\" must start with http:// or https://",
            truncate(raw, 80)
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("\"{}\" has no host", truncate(raw, 80)));
    }
    Ok(url)
}

fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max_chars).collect();
        t.push('…');
        t
    }
}

fn is_blank(record: &csv::StringRecord) -> bool {
    record.iter().all(|f| f.trim().is_empty())
}

/// Line numbers from byte offsets. The reader's own line count drifts
/// after skipped empty lines and with `\r\n` endings, and a record's offset
/// can point at the line break before it, so breaks there are skipped.
/// Offsets arrive in order, so the count moves forward with them: no
/// memory per line (a file of line breaks costs nothing to index).
struct LineIndex<'t> {
    text: &'t [u8],
    /// The last offset counted to, and the line breaks before it.
    counted: std::cell::Cell<(usize, u64)>,
}

impl<'t> LineIndex<'t> {
    fn new(text: &'t str) -> Self {
        Self {
            text: text.as_bytes(),
            counted: std::cell::Cell::new((0, 0)),
        }
    }

    fn line_at(&self, mut byte: usize) -> u64 {
        while matches!(self.text.get(byte), Some(b'\n' | b'\r')) {
            byte += 1;
        }
        let byte = byte.min(self.text.len());
        let (mut from, mut breaks) = self.counted.get();
        if byte < from {
            // An offset before the last one: count again from the start.
            (from, breaks) = (0, 0);
        }
        breaks += self.text[from..byte]
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64;
        self.counted.set((byte, breaks));
        1 + breaks
    }

    fn line_of(&self, record: &csv::StringRecord) -> u64 {
        record
            .position()
            .map_or(1, |p| self.line_at(p.byte() as usize))
    }
}

fn csv_error_issue(e: &csv::Error, lines: &LineIndex<'_>) -> Issue {
    let line = e.position().map(|p| lines.line_at(p.byte() as usize));
    Issue {
        line,
        column: None,
        message: format!("the CSV cannot be read here: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: CsvLimits = CsvLimits {
        max_rows: 10_000,
        max_images: 50_000,
        max_images_per_row: 50,
    };

    fn ok(csv: &str) -> ParsedCsv {
        match parse(csv.as_bytes(), &LIMITS) {
            Ok(p) => p,
            Err(issues) => panic!("expected a valid file, got {issues:#?}"),
        }
    }

    fn errs(csv: &[u8]) -> Vec<Issue> {
        errs_with(csv, &LIMITS)
    }

    fn errs_with(csv: &[u8], limits: &CsvLimits) -> Vec<Issue> {
        match parse(csv, limits) {
            Ok(p) => panic!("expected problems, got {p:#?}"),
            Err(issues) => issues,
        }
    }

    fn only(issues: &[Issue]) -> &Issue {
        assert_eq!(issues.len(), 1, "{issues:#?}");
        &issues[0]
    }

    #[test]
    fn parses_the_example_from_the_contract() {
        let p = ok(
            "S. No.,Product Name,Input Image Urls\n1,SKU1,\"https://example.com/a.jpg,https://example.com/b.png\"\n2,SKU2,https://example.com/c.webp\n",
        );
        assert_eq!(p.products.len(), 2);
        assert_eq!(
            p.products[0].urls,
            ["https://example.com/a.jpg", "https://example.com/b.png"]
        );
        assert_eq!(p.products[1].serial_number, 2);
        assert_eq!(p.products[1].line, 3);
        assert_eq!(p.image_count(), 3);
        assert!(p.warnings.is_empty());
    }

    #[test]
    fn tolerates_a_bom_and_crlf() {
        let p = ok(
            "\u{feff}S. No.,Product Name,Input Image Urls\r\n1,A,https://e.com/a.jpg\r\n2,B,https://e.com/b.jpg\r\n",
        );
        assert_eq!(p.products.len(), 2);
        assert_eq!(p.products[1].product_name, "B");
        assert_eq!(p.products[1].line, 3);
    }

    #[test]
    fn header_aliases_match_after_normalising() {
        for header in [
            "S. No.,Product Name,Input Image Urls",
            "S.No.,product name,INPUT IMAGE URLS",
            "S No,  Product   Name ,Input Image Urls",
            "Serial Number,Product_Name,input-image-urls",
        ] {
            let p = ok(&format!("{header}\n7,A,https://e.com/a.jpg\n"));
            assert_eq!(p.products[0].serial_number, 7, "{header}");
        }
    }

    #[test]
    fn columns_may_come_in_any_order_and_extra_ones_are_warned_about() {
        let p =
            ok("Input Image Urls,Notes,Product Name,S. No.\nhttps://e.com/a.jpg,hello,Shoe,3\n");
        assert_eq!(p.products[0].serial_number, 3);
        assert_eq!(p.products[0].product_name, "Shoe");
        assert_eq!(
            p.warnings,
            ["unknown column \"Notes\" (column 2) was ignored"]
        );
    }

    #[test]
    fn a_quoted_url_list_may_span_lines_and_errors_name_its_first_line() {
        let csv = "S. No.,Product Name,Input Image Urls\n1,A,\"https://e.com/a.jpg,\n  https://e.com/b.jpg ,,\n https://e.com/c.jpg\"\n2,B,ftp://e.com/x.jpg\n";
        let issues = errs(csv.as_bytes());
        let i = only(&issues);
        assert_eq!(i.line, Some(5));
        assert_eq!(i.column.as_deref(), Some("Input Image Urls"));
        let fixed = csv.replace("ftp://", "https://");
        let p = ok(&fixed);
        assert_eq!(
            p.products[0].urls,
            [
                "https://e.com/a.jpg",
                "https://e.com/b.jpg",
                "https://e.com/c.jpg"
            ]
        );
        assert_eq!(p.products[1].line, 5);
    }

    #[test]
    fn line_numbers_count_crlf_and_skipped_empty_lines() {
        let csv = "\r\nS. No.,Product Name,Input Image Urls\r\n\r\n\r\n1,A,\"https://e.com/a.jpg,\r\nhttps://e.com/b.jpg\"\r\n\n0,B,https://e.com/c.jpg\r\n";
        let i = only(&errs(csv.as_bytes())).clone();
        assert_eq!(i.line, Some(8));
        let p = ok(&csv.replace("0,B", "2,B"));
        assert_eq!((p.products[0].line, p.products[1].line), (5, 8));
    }

    #[test]
    fn blank_lines_are_skipped() {
        let p = ok(
            "\nS. No.,Product Name,Input Image Urls\n\n1,A,https://e.com/a.jpg\n   \n,,\n2,B,https://e.com/b.jpg\n\n",
        );
        assert_eq!(p.products.len(), 2);
        assert_eq!(p.products[1].line, 7);
    }

    #[test]
    fn serial_number_must_be_a_positive_integer() {
        for bad in ["0", "-1", "abc", "1.5", ""] {
            let issues = errs(
                format!("S. No.,Product Name,Input Image Urls\n{bad},A,https://e.com/a.jpg\n")
                    .as_bytes(),
            );
            let i = only(&issues);
            assert_eq!(
                (i.line, i.column.as_deref()),
                (Some(2), Some("S. No.")),
                "{bad}"
            );
        }
    }

    #[test]
    fn serial_numbers_must_be_unique() {
        let issues = errs(b"S. No.,Product Name,Input Image Urls\n1,A,https://e.com/a.jpg\n1,B,https://e.com/b.jpg\n");
        let i = only(&issues);
        assert_eq!(i.line, Some(3));
        assert!(i.message.contains("line 2"), "{}", i.message);
    }

    #[test]
    fn product_name_is_required_and_bounded() {
        let issues = errs(b"S. No.,Product Name,Input Image Urls\n1,   ,https://e.com/a.jpg\n");
        assert_eq!(only(&issues).column.as_deref(), Some("Product Name"));
        let long = "é".repeat(257);
        let issues = errs(
            format!("S. No.,Product Name,Input Image Urls\n1,{long},https://e.com/a.jpg\n")
                .as_bytes(),
        );
        assert!(only(&issues).message.contains("257"));
        ok(&format!(
            "S. No.,Product Name,Input Image Urls\n1,{},https://e.com/a.jpg\n",
            "é".repeat(256)
        ));
    }

    #[test]
    fn urls_must_be_absolute_http_and_bounded() {
        for bad in [
            "e.com/a.jpg",
            "ftp://e.com/a.jpg",
            "javascript:alert(1)",
            "http://",
            "/a.jpg",
        ] {
            let issues = errs(
                format!(
                    "S. No.,Product Name,Input Image Urls\n1,A,\"https://e.com/ok.jpg,{bad}\"\n"
                )
                .as_bytes(),
            );
            let i = only(&issues);
            assert_eq!(i.column.as_deref(), Some("Input Image Urls"), "{bad}");
            assert!(i.message.starts_with("URL 2 "), "{}", i.message);
        }
        // Forms the URL standard forgives but a person did not mean.
        for lax in [
            "http:.gpj",
            "http:e.com/a.jpg",
            "http:/e.com/a.jpg",
            "https:\\\\e.com\\a.jpg",
        ] {
            assert!(
                check_url_syntax(lax)
                    .unwrap_err()
                    .contains("must start with http:// or https://"),
                "{lax}"
            );
        }
        assert_eq!(
            check_url_syntax("HTTPS://E.com/a.jpg")
                .map(|u| u.to_string())
                .as_deref(),
            Ok("https://e.com/a.jpg")
        );
        let long = format!("https://e.com/{}", "a".repeat(2040));
        assert!(
            only(&errs(
                format!("S. No.,Product Name,Input Image Urls\n1,A,{long}\n").as_bytes()
            ))
            .message
            .contains("2048")
        );
    }

    #[test]
    fn a_row_needs_at_least_one_url() {
        let issues = errs(b"S. No.,Product Name,Input Image Urls\n1,A,\" , ,\"\n");
        assert!(only(&issues).message.contains("at least one"));
    }

    #[test]
    fn too_many_urls_in_a_row() {
        let limits = CsvLimits {
            max_images_per_row: 2,
            ..LIMITS
        };
        let issues = errs_with(b"S. No.,Product Name,Input Image Urls\n1,A,\"https://e.com/1,https://e.com/2,https://e.com/3\"\n", &limits);
        assert!(only(&issues).message.contains("at most 2"));
    }

    #[test]
    fn too_many_rows_and_images_are_file_level() {
        let limits = CsvLimits {
            max_rows: 2,
            max_images: 3,
            max_images_per_row: 50,
        };
        let csv = b"S. No.,Product Name,Input Image Urls\n1,A,\"https://e.com/1,https://e.com/2\"\n2,B,\"https://e.com/1,https://e.com/2\"\n3,C,https://e.com/3\n";
        let issues = errs_with(csv, &limits);
        assert_eq!(issues.len(), 2, "{issues:#?}");
        assert!(
            issues
                .iter()
                .all(|i| i.line.is_none() && i.column.is_none())
        );
        assert!(issues[0].message.contains("3 rows"));
        assert!(issues[1].message.contains("4 images"));
    }

    #[test]
    fn empty_files_and_files_without_rows() {
        for empty in [&b""[..], b"\xEF\xBB\xBF", b"\n\r\n  \n"] {
            let i = only(&errs(empty)).clone();
            assert_eq!((i.line, i.column), (None, None));
            assert!(i.message.contains("empty"));
        }
        let i = only(&errs(b"S. No.,Product Name,Input Image Urls\n\n")).clone();
        assert_eq!(i.line, None);
        assert!(i.message.contains("no product rows"));
    }

    #[test]
    fn not_utf8_is_file_level() {
        let i = only(&errs(
            b"S. No.,Product Name,Input Image Urls\n1,Caf\xe9,https://e.com/a.jpg\n",
        ))
        .clone();
        assert_eq!(i.line, None);
        assert!(i.message.contains("UTF-8"));
        assert!(i.message.contains("line 2"));
    }

    #[test]
    fn missing_and_duplicate_columns_are_reported_on_the_header_line() {
        let issues = errs(b"\nS. No.,Name\n1,A\n");
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].line, Some(2));
        assert_eq!(issues[0].column.as_deref(), Some("Input Image Urls"));
        let issues = errs(b"S. No.,Product Name,Input Image Urls,SNo\n1,A,https://e.com/a.jpg,1\n");
        assert!(only(&issues).message.contains("twice"));
    }

    #[test]
    fn wrong_field_counts() {
        let issues = errs(b"S. No.,Product Name,Input Image Urls\n1,A\n2,B,https://e.com/a.jpg,https://e.com/b.jpg\n");
        assert_eq!(issues.len(), 2);
        assert_eq!(issues[0].line, Some(2));
        assert!(issues[1].message.contains("double quotes"));
        // Trailing empty fields, as spreadsheets export them, are harmless.
        ok("S. No.,Product Name,Input Image Urls\n1,A,https://e.com/a.jpg,,\n");
    }

    #[test]
    fn every_problem_is_reported_at_once_up_to_a_hundred() {
        let mut csv = String::from("S. No.,Product Name,Input Image Urls\n");
        for i in 0..150 {
            csv.push_str(&format!("x{i},,nope\n"));
        }
        let issues = errs(csv.as_bytes());
        assert_eq!(issues.len(), MAX_REPORTED_ISSUES);
        assert_eq!(issues[0].line, Some(2));
        assert_eq!(issues[3].line, Some(3));
    }
}
