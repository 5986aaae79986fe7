//! The CSV parser and validator on arbitrary bytes: never a panic, and
//! every accepted file within the rules and limits of SPEC §1.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;

/// The service's own parser, the very file `imgproc::domain::csv_input` is.
#[path = "../../shared/src/domain/csv_input.rs"]
#[allow(dead_code)]
mod csv_input;

use csv_input::{CsvLimits, parse};

const LIMITS: CsvLimits = CsvLimits {
    max_rows: 50,
    max_images: 200,
    max_images_per_row: 10,
};

fuzz_target!(|data: &[u8]| {
    match parse(data, &LIMITS) {
        Ok(parsed) => {
            assert!(!parsed.products.is_empty() && parsed.products.len() <= LIMITS.max_rows);
            assert!(parsed.image_count() <= LIMITS.max_images);
            let mut serials = HashSet::new();
            for p in &parsed.products {
                assert!(
                    p.serial_number > 0 && serials.insert(p.serial_number),
                    "serial numbers are positive and unique"
                );
                assert!(!p.product_name.trim().is_empty() && p.product_name.chars().count() <= 256);
                assert!(!p.urls.is_empty() && p.urls.len() <= LIMITS.max_images_per_row);
                for u in &p.urls {
                    assert!(
                        u.chars().count() <= 2048
                            && ["http://", "https://"].iter().any(|p| u
                                .get(..p.len())
                                .is_some_and(|h| h.eq_ignore_ascii_case(p))),
                        "{u:?}"
                    );
                }
            }
        }
        // Every problem at once, at most the first 100.
        Err(issues) => assert!(
            !issues.is_empty() && issues.len() <= 100,
            "{} issues",
            issues.len()
        ),
    }
});
