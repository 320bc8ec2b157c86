//! The README and the OpenAPI file stay true to the code: every error code and every
//! route is documented.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use common::wire::ErrorCode;

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("{}/../{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn every_error_code_is_documented_with_its_status() {
    let readme = read("README.md");
    let openapi = read("openapi.yaml");
    for code in ErrorCode::ALL {
        let row = format!("| `{}` | {} |", code.as_str(), code.http_status());
        assert!(readme.contains(&row), "README lacks the row {row}");
        assert!(
            openapi.contains(&format!("- {}\n", code.as_str())),
            "openapi.yaml lacks the code {}",
            code.as_str()
        );
    }
}

#[test]
fn every_route_is_in_the_openapi_file() {
    let openapi = read("openapi.yaml");
    let api = read("host/src/api/router.rs");
    let routes: Vec<&str> = api
        .split(".route(")
        .skip(1)
        .filter_map(|rest| rest.trim_start().strip_prefix('"'))
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert!(routes.len() >= 9, "{routes:?}");
    for route in routes {
        assert!(
            openapi.contains(&format!("\n  {route}:\n")),
            "openapi.yaml lacks {route}"
        );
    }
}

#[test]
fn the_readmes_configuration_block_is_the_defaults() {
    let readme = read("README.md");
    let start = readme
        .find("```toml\n[api]")
        .expect("the README's configuration block");
    let block = &readme[start + "```toml\n".len()..];
    let block = &block[..block.find("```").unwrap()];
    let parsed: host::config::Config = toml::from_str(block).unwrap();
    assert_eq!(parsed, host::config::Config::default());
}
