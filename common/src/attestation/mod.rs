//! Parsing of what attested KMS calls exchange (docs/design.md §4): Nitro attestation
//! documents (COSE_Sign1 with a certificate chain), and the CMS envelope KMS answers
//! with, over a BER reader that accepts both the indefinite lengths real KMS emits and
//! DER.

/// The AWS Nitro Enclaves root CA (CN=aws.nitro-enclaves), which every real attestation
/// document chains to; the same bytes as `testdata/fixtures/nitro-attestation/aws-nitro-root.pem`
/// (a test checks).
pub const AWS_NITRO_ROOT_PEM: &[u8] = include_bytes!("aws-nitro-root.pem");

pub mod ber;
pub mod cms;
pub mod document;
