//! popgw's contracts, compiled from the top-level `proto/` folder (see build.rs): prost
//! messages, tonic clients and servers, proto3-JSON serde impls (pbjson) and the
//! descriptor set served by gRPC reflection. A crate of its own so that the gateway and
//! its tools (the population generator, the benchmark instruments) share one set of
//! types, and so that the generated code is compiled once, not again with each of the
//! gateway's test builds. The gateway re-exports it as `popgw::proto`.
//!
//! Beside the generated code, one table the contract's `personal_id` field is read by:
//! [`PROVINCES`], the codes its first three digits name — the gateway validates ids
//! against it and the population generator draws ids from it.
#![forbid(unsafe_code)]
#![allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]

/// Generated code, laid out as the proto packages are (`popgw.v1`, `popgw.registry.v1`).
pub mod popgw {
    pub mod registry {
        pub mod v1 {
            tonic::include_proto!("popgw.registry.v1");
            include!(concat!(env!("OUT_DIR"), "/popgw.registry.v1.serde.rs"));
        }
    }
    pub mod v1 {
        tonic::include_proto!("popgw.v1");
        include!(concat!(env!("OUT_DIR"), "/popgw.v1.serde.rs"));
    }
}

/// The upstream registry's contract (`popgw.registry.v1`).
pub use popgw::registry::v1 as registry;
/// The gateway's public API (`popgw.v1`).
pub use popgw::v1 as gateway;

/// Encoded descriptor set of every popgw proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/popgw_descriptor.bin"));

/// The 63 historical province codes (PPP of the 12-digit id) and their names.
/// Ids were not renumbered by the 2025 merger, so these are the codes to validate against.
pub const PROVINCES: &[(&str, &str)] = &[
    ("001", "Hà Nội"),
    ("002", "Hà Giang"),
    ("004", "Cao Bằng"),
    ("006", "Bắc Kạn"),
    ("008", "Tuyên Quang"),
    ("010", "Lào Cai"),
    ("011", "Điện Biên"),
    ("012", "Lai Châu"),
    ("014", "Sơn La"),
    ("015", "Yên Bái"),
    ("017", "Hòa Bình"),
    ("019", "Thái Nguyên"),
    ("020", "Lạng Sơn"),
    ("022", "Quảng Ninh"),
    ("024", "Bắc Giang"),
    ("025", "Phú Thọ"),
    ("026", "Vĩnh Phúc"),
    ("027", "Bắc Ninh"),
    ("030", "Hải Dương"),
    ("031", "Hải Phòng"),
    ("033", "Hưng Yên"),
    ("034", "Thái Bình"),
    ("035", "Hà Nam"),
    ("036", "Nam Định"),
    ("037", "Ninh Bình"),
    ("038", "Thanh Hóa"),
    ("040", "Nghệ An"),
    ("042", "Hà Tĩnh"),
    ("044", "Quảng Bình"),
    ("045", "Quảng Trị"),
    ("046", "Thừa Thiên Huế"),
    ("048", "Đà Nẵng"),
    ("049", "Quảng Nam"),
    ("051", "Quảng Ngãi"),
    ("052", "Bình Định"),
    ("054", "Phú Yên"),
    ("056", "Khánh Hòa"),
    ("058", "Ninh Thuận"),
    ("060", "Bình Thuận"),
    ("062", "Kon Tum"),
    ("064", "Gia Lai"),
    ("066", "Đắk Lắk"),
    ("067", "Đắk Nông"),
    ("068", "Lâm Đồng"),
    ("070", "Bình Phước"),
    ("072", "Tây Ninh"),
    ("074", "Bình Dương"),
    ("075", "Đồng Nai"),
    ("077", "Bà Rịa – Vũng Tàu"),
    ("079", "Hồ Chí Minh"),
    ("080", "Long An"),
    ("082", "Tiền Giang"),
    ("083", "Bến Tre"),
    ("084", "Trà Vinh"),
    ("086", "Vĩnh Long"),
    ("087", "Đồng Tháp"),
    ("089", "An Giang"),
    ("091", "Kiên Giang"),
    ("092", "Cần Thơ"),
    ("093", "Hậu Giang"),
    ("094", "Sóc Trăng"),
    ("095", "Bạc Liêu"),
    ("096", "Cà Mau"),
];
