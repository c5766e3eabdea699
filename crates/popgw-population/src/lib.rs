//! A deterministic synthetic population, written as JSON Lines (one proto3-JSON
//! `CitizenRecord` per line) for the embedded registry, demos, tests and benchmarks:
//! `popgw registry generate`, and the demo population of `popgw serve`'s first start.
//! A crate of its own: the serving library does not carry it.
//!
//! The same `(count, seed)` always gives the same bytes (ChaCha8 seeded from the
//! seed; dates relative to a fixed "today", 2025-06-30, not the clock). What it
//! models:
//! - 12-digit ids `PPP G YY RRRRRR`: the province of birth registration (the 63
//!   historical codes), the century/sex digit, the birth year; all unique;
//! - names upper case with diacritics: common Kinh family names, compound ones
//!   (NGUYỄN PHÚC, TÔN THẤT and their daughters' TÔN NỮ, ÂU DƯƠNG), Ê Đê names with
//!   the clan last (H'HEN NIÊ, Y MOAN ÊBAN), Jrai names with the clan first
//!   (KSOR PHƯỚC), Mông names (GIÀNG A PHỬ); Ê Đê and Jrai children take the
//!   mother's clan (matrilineal), the others the father's family name;
//! - households of 1–6 people (head, spouse, children, sometimes the head's widowed
//!   mother), with father / mother / spouse / children links filled both ways by
//!   id; parents outside the population appear by name only;
//! - about 3 % year-only dates of birth, 2 % deceased, 30 % with an old 9-digit id
//!   (unique), ethnicity by province (mostly Kinh), religion mostly "Không";
//! - id cards (CCCD, and the CMND for old ids) with the legal expiry ages;
//! - no phone numbers: any realistic number might belong to a real person, so the
//!   field stays empty; e-mail addresses use the reserved `example.com` domain.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::collections::HashSet;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use chrono::{Datelike, Duration, NaiveDate};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use popgw_proto::registry::{
    Address, CitizenRecord, HouseholdRef, IdCard, MaritalStatus, Relative, Sex,
};
use popgw_proto::PROVINCES;

/// What [`generate()`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenerateSummary {
    /// Citizens written.
    pub count: u64,
    /// Households written.
    pub households: u64,
    /// Citizens with a date of death.
    pub deceased: u64,
    /// Citizens whose date of birth is a year only.
    pub year_only: u64,
    /// Citizens with an old 9-digit id.
    pub with_old_id: u64,
}

/// Writes `count` synthetic citizens as JSON Lines to `out`, deterministically for
/// `seed`. The writer is buffered internally and flushed at the end.
pub fn generate(count: u64, seed: u64, out: &mut impl Write) -> io::Result<GenerateSummary> {
    let mut w = BufWriter::with_capacity(1 << 20, out);
    let mut g = Generator::new(seed);
    while g.summary.count < count {
        let remaining = count - g.summary.count;
        for rec in g.household(remaining) {
            serde_json::to_writer(&mut w, &rec)?;
            w.write_all(b"\n")?;
        }
    }
    w.flush()?;
    Ok(g.summary)
}

/// [`generate()`] into a new file at `path` (truncated if it exists), synced to disk.
pub fn generate_to_file(count: u64, seed: u64, path: &Path) -> io::Result<GenerateSummary> {
    let mut file = std::fs::File::create(path)?;
    let summary = generate(count, seed, &mut file)?;
    file.sync_all()?;
    Ok(summary)
}

/// The fixed "today" of the synthetic population.
fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2025, 6, 30).expect("valid date")
}

const NATIONALITY: &str = "Việt Nam";
const CCCD_ISSUER: &str = "Cục Cảnh sát quản lý hành chính về trật tự xã hội";

/// Naming conventions.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    /// Family name, middle name, given name; patrilineal.
    Kinh(&'static [(&'static str, u32)]),
    /// `Y`/`H'` + given name + clan; matrilineal.
    Ede,
    /// Clan + (`H'`) given name; matrilineal.
    Jrai,
    /// Clan + `A`/`THỊ` + given name; patrilineal, clan exogamy.
    Hmong,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Eth {
    Kinh,
    Tay,
    Thai,
    Muong,
    Khmer,
    Hoa,
    Nung,
    Hmong,
    Dao,
    GiaRai,
    Ede,
    Cham,
}

const KINH_FAMILIES: &[(&str, u32)] = &[
    ("NGUYỄN", 380),
    ("TRẦN", 110),
    ("LÊ", 95),
    ("PHẠM", 70),
    ("HOÀNG", 30),
    ("HUỲNH", 21),
    ("PHAN", 45),
    ("VŨ", 22),
    ("VÕ", 17),
    ("ĐẶNG", 21),
    ("BÙI", 20),
    ("ĐỖ", 14),
    ("HỒ", 13),
    ("NGÔ", 13),
    ("DƯƠNG", 10),
    ("LÝ", 5),
    ("TRƯƠNG", 8),
    ("ĐINH", 7),
    ("LƯU", 5),
    ("MAI", 5),
    ("ĐÀO", 5),
    ("CAO", 4),
    ("LÂM", 4),
    ("HÀ", 5),
    ("TÔ", 4),
    ("NGUYỄN PHÚC", 1),
    ("TÔN THẤT", 1),
    ("ÂU DƯƠNG", 1),
];
const TAY_NUNG_FAMILIES: &[(&str, u32)] = &[
    ("NÔNG", 20),
    ("HOÀNG", 20),
    ("LƯƠNG", 10),
    ("LÃ", 5),
    ("MA", 8),
    ("BẾ", 8),
    ("TRIỆU", 8),
    ("LỘC", 6),
    ("NGUYỄN", 10),
];
const THAI_FAMILIES: &[(&str, u32)] = &[
    ("LÒ", 25),
    ("CẦM", 15),
    ("QUÀNG", 15),
    ("LƯỜNG", 15),
    ("VI", 10),
    ("HÀ", 10),
];
const MUONG_FAMILIES: &[(&str, u32)] = &[
    ("BÙI", 35),
    ("ĐINH", 25),
    ("QUÁCH", 15),
    ("XA", 5),
    ("HÀ", 10),
];
const KHMER_FAMILIES: &[(&str, u32)] = &[
    ("THẠCH", 35),
    ("DANH", 25),
    ("SƠN", 20),
    ("KIM", 10),
    ("LÂM", 5),
];
const HOA_FAMILIES: &[(&str, u32)] = &[
    ("LÝ", 20),
    ("TRƯƠNG", 20),
    ("LÂM", 15),
    ("QUÁCH", 10),
    ("DIỆP", 10),
    ("HỨA", 10),
    ("TĂNG", 10),
];
const DAO_FAMILIES: &[(&str, u32)] = &[
    ("TRIỆU", 35),
    ("BÀN", 25),
    ("ĐẶNG", 20),
    ("LÝ", 10),
    ("PHÙN", 5),
];
const CHAM_FAMILIES: &[(&str, u32)] = &[
    ("THÀNH", 20),
    ("ĐÀNG", 20),
    ("QUẢNG", 15),
    ("LƯU", 10),
    ("BÁ", 10),
    ("THẬP", 10),
];

const MIDDLE_MALE: &[&str] = &[
    "VĂN", "VĂN", "VĂN", "ĐỨC", "MINH", "QUANG", "HỮU", "CÔNG", "THANH", "XUÂN", "NGỌC", "ĐÌNH",
];
const MIDDLE_FEMALE: &[&str] = &[
    "THỊ", "THỊ", "THỊ", "NGỌC", "THU", "THANH", "MINH", "KIM", "PHƯƠNG", "BẢO", "HOÀI", "MỸ",
];
const GIVEN_MALE: &[&str] = &[
    "HÙNG", "DŨNG", "TUẤN", "MINH", "NAM", "HẢI", "SƠN", "LONG", "QUÂN", "HUY", "KHOA", "PHÚC",
    "BẢO", "AN", "ĐẠT", "TRUNG", "THẮNG", "CƯỜNG", "HIẾU", "KIÊN", "TÚ", "VIỆT", "HOÀNG", "THÀNH",
    "LỢI", "TÂM", "KHANG", "PHONG", "VINH", "ĐỨC", "BÌNH", "QUÝ",
];
const GIVEN_FEMALE: &[&str] = &[
    "LAN", "HƯƠNG", "HOA", "MAI", "LINH", "NGA", "THẢO", "TRANG", "HÀ", "HUYỀN", "YẾN", "THÚY",
    "HẰNG", "NHUNG", "ANH", "VY", "NGÂN", "HÒA", "THUÝ", "LÝ", "OANH", "PHƯƠNG", "DUNG", "TUYẾT",
    "CHI", "QUỲNH", "GIANG", "HIỀN", "NHI", "THƯ",
];
const KHMER_MALE: &[&str] = &["SÔ PHOL", "SA RƠN", "THOL", "CHANH", "RA", "SÊNH", "SA MOL"];
const KHMER_FEMALE: &[&str] = &["SÔ PHI", "SÀ RÂY", "THA", "NA RY", "SA RÁ", "SÔ KHA"];
const EDE_CLANS: &[(&str, u32)] = &[
    ("NIÊ", 20),
    ("ÊBAN", 15),
    ("MLÔ", 10),
    ("BYĂ", 10),
    ("KSƠR", 10),
    ("BUÔN YĂ", 5),
    ("ADRƠNG", 8),
    ("HĐOK", 6),
    ("KBUÔR", 5),
    ("NIÊ KDĂM", 5),
    ("ÊNUÔL", 5),
];
const EDE_MALE: &[&str] = &[
    "MOAN", "BLIN", "KHU", "SOAI", "BHIN", "DHUÊ", "NGÔNG", "JÚ", "HIÊ", "TLIÊR",
];
const EDE_FEMALE: &[&str] = &[
    "HEN", "BLUÊ", "NHI", "ZIN", "HOA", "LIÊN", "DƠNG", "ĐÁCH", "NGUYÊN", "RIM",
];
const JRAI_CLANS: &[(&str, u32)] = &[
    ("KSOR", 25),
    ("RƠ MAH", 20),
    ("SIU", 20),
    ("RƠ LAN", 10),
    ("NAY", 10),
    ("PUIH", 10),
    ("KPĂ", 5),
];
const JRAI_MALE: &[&str] = &[
    "PHƯỚC", "TUÂN", "BLÍP", "DƠK", "HLIN", "NGUAL", "THU", "KLÔNG",
];
const JRAI_FEMALE: &[&str] = &["BƠ KHẮP", "MAI", "NGOAN", "LIN", "PLƠNG", "YŨ", "BLƠI"];
const HMONG_CLANS: &[(&str, u32)] = &[
    ("GIÀNG", 20),
    ("THÀO", 15),
    ("VÀNG", 15),
    ("LÝ", 10),
    ("SÙNG", 10),
    ("MÙA", 8),
    ("HẠNG", 6),
    ("LẦU", 6),
    ("CỨ", 4),
    ("VỪ", 4),
    ("HỜ", 4),
    ("SÌNH", 4),
];
const HMONG_MALE: &[&str] = &[
    "PHỬ", "SÁNG", "DÌA", "CHỨ", "PÁO", "SỬ", "TÚA", "LỀNH", "PHÁY", "DẾ",
];
const HMONG_FEMALE: &[&str] = &[
    "MỶ", "DỞ", "SÚA", "PÀ", "MÁY", "DI", "CHÁ", "XÍ", "LAN", "MAI",
];

const WARDS: &[&str] = &[
    "Tân Lập",
    "An Phú",
    "Hòa Bình",
    "Quang Trung",
    "Thanh Xuân",
    "Lê Lợi",
    "Tân Thành",
    "Phú Lợi",
    "Hưng Long",
    "Bình An",
    "Đông Hòa",
    "Minh Khai",
    "Trung Hòa",
    "Yên Hòa",
    "Phước Long",
    "Long Thạnh",
    "Tân Phú",
    "Vĩnh Thịnh",
    "Hòa Khánh",
    "Nghĩa Tân",
    "Kim Liên",
    "Xuân Phương",
    "Đồng Tâm",
    "Hiệp Hòa",
    "Tân Định",
    "Quyết Thắng",
];
const STREETS: &[&str] = &[
    "Lê Lợi",
    "Trần Hưng Đạo",
    "Nguyễn Trãi",
    "Hai Bà Trưng",
    "Quang Trung",
    "Hùng Vương",
    "Lý Thường Kiệt",
    "Điện Biên Phủ",
    "Nguyễn Du",
    "Phan Chu Trinh",
    "Lê Duẩn",
    "Trường Chinh",
    "Võ Thị Sáu",
    "Nguyễn Văn Cừ",
];
/// Centrally-run cities: urban addresses, "Thành phố" police.
const CITIES: &[&str] = &["001", "031", "048", "079", "092"];

impl Eth {
    fn name(self) -> &'static str {
        match self {
            Eth::Kinh => "Kinh",
            Eth::Tay => "Tày",
            Eth::Thai => "Thái",
            Eth::Muong => "Mường",
            Eth::Khmer => "Khmer",
            Eth::Hoa => "Hoa",
            Eth::Nung => "Nùng",
            Eth::Hmong => "Mông",
            Eth::Dao => "Dao",
            Eth::GiaRai => "Gia Rai",
            Eth::Ede => "Ê Đê",
            Eth::Cham => "Chăm",
        }
    }

    fn style(self) -> Style {
        match self {
            Eth::Kinh => Style::Kinh(KINH_FAMILIES),
            Eth::Tay | Eth::Nung => Style::Kinh(TAY_NUNG_FAMILIES),
            Eth::Thai => Style::Kinh(THAI_FAMILIES),
            Eth::Muong => Style::Kinh(MUONG_FAMILIES),
            Eth::Khmer => Style::Kinh(KHMER_FAMILIES),
            Eth::Hoa => Style::Kinh(HOA_FAMILIES),
            Eth::Dao => Style::Kinh(DAO_FAMILIES),
            Eth::Cham => Style::Kinh(CHAM_FAMILIES),
            Eth::Hmong => Style::Hmong,
            Eth::GiaRai => Style::Jrai,
            Eth::Ede => Style::Ede,
        }
    }

    /// Religions and weights (per mille).
    fn religions(self) -> &'static [(&'static str, u32)] {
        match self {
            Eth::Kinh => &[
                ("Không", 820),
                ("Công giáo", 80),
                ("Phật giáo", 70),
                ("Tin lành", 10),
                ("Cao Đài", 10),
                ("Phật giáo Hòa Hảo", 10),
            ],
            Eth::Ede | Eth::GiaRai => &[("Không", 450), ("Tin lành", 400), ("Công giáo", 150)],
            Eth::Hmong => &[("Không", 800), ("Tin lành", 200)],
            Eth::Khmer => &[("Phật giáo", 950), ("Không", 50)],
            Eth::Cham => &[("Không", 400), ("Bà La Môn", 350), ("Hồi giáo", 250)],
            Eth::Hoa => &[("Không", 700), ("Phật giáo", 300)],
            _ => &[("Không", 900), ("Phật giáo", 50), ("Tin lành", 50)],
        }
    }
}

/// Minority shares (per mille) by province of residence; the rest is Kinh.
fn minorities(code: &str) -> &'static [(Eth, u32)] {
    match code {
        "002" | "010" => &[(Eth::Hmong, 330), (Eth::Tay, 200), (Eth::Dao, 120)],
        "011" | "012" => &[(Eth::Thai, 350), (Eth::Hmong, 350), (Eth::Dao, 50)],
        "014" => &[(Eth::Thai, 530), (Eth::Hmong, 160), (Eth::Muong, 80)],
        "015" => &[(Eth::Tay, 190), (Eth::Dao, 100), (Eth::Hmong, 100)],
        "004" | "006" | "020" => &[(Eth::Tay, 380), (Eth::Nung, 320), (Eth::Dao, 80)],
        "008" | "019" => &[(Eth::Tay, 250), (Eth::Dao, 60), (Eth::Nung, 30)],
        "017" => &[(Eth::Muong, 620), (Eth::Thai, 40)],
        "038" => &[(Eth::Muong, 90), (Eth::Thai, 60)],
        "040" => &[(Eth::Thai, 100)],
        "064" => &[(Eth::GiaRai, 300)],
        "062" => &[(Eth::GiaRai, 100)],
        "066" | "067" => &[(Eth::Ede, 180), (Eth::Nung, 40), (Eth::Tay, 30)],
        "058" => &[(Eth::Cham, 120)],
        "094" => &[(Eth::Khmer, 300), (Eth::Hoa, 30)],
        "084" => &[(Eth::Khmer, 320)],
        "091" => &[(Eth::Khmer, 120), (Eth::Hoa, 20)],
        "089" => &[(Eth::Khmer, 40), (Eth::Cham, 10)],
        "079" => &[(Eth::Hoa, 40)],
        _ => &[],
    }
}

fn pick<'a, T, R: Rng>(rng: &mut R, items: &'a [(T, u32)]) -> &'a T {
    let total: u32 = items.iter().map(|(_, w)| w).sum();
    let mut x = rng.gen_range(0..total);
    for (item, w) in items {
        if x < *w {
            return item;
        }
        x -= w;
    }
    &items[items.len() - 1].0
}

fn one<'a, R: Rng>(rng: &mut R, items: &[&'a str]) -> &'a str {
    items[rng.gen_range(0..items.len())]
}

/// The family name a person of `sex` bears in a family called `family`.
fn family_as(family: &'static str, sex: Sex) -> &'static str {
    match (family, sex) {
        ("NGUYỄN PHÚC" | "TÔN THẤT", Sex::Female) => "TÔN NỮ",
        ("TÔN NỮ", Sex::Male) => "TÔN THẤT",
        _ => family,
    }
}

fn random_family<R: Rng>(rng: &mut R, style: Style, sex: Sex) -> &'static str {
    let f = match style {
        Style::Kinh(pool) => pick(rng, pool),
        Style::Ede => pick(rng, EDE_CLANS),
        Style::Jrai => pick(rng, JRAI_CLANS),
        Style::Hmong => pick(rng, HMONG_CLANS),
    };
    family_as(f, sex)
}

/// A full name in `style` for someone of `sex` whose family name / clan is `family`.
fn full_name<R: Rng>(rng: &mut R, style: Style, eth: Eth, sex: Sex, family: &str) -> String {
    let male = sex == Sex::Male;
    match style {
        Style::Ede => {
            let given = one(rng, if male { EDE_MALE } else { EDE_FEMALE });
            if male {
                format!("Y {given} {family}")
            } else {
                format!("H'{given} {family}")
            }
        }
        Style::Jrai => {
            let given = one(rng, if male { JRAI_MALE } else { JRAI_FEMALE });
            if male {
                format!("{family} {given}")
            } else {
                format!("{family} H'{given}")
            }
        }
        Style::Hmong => {
            let given = one(rng, if male { HMONG_MALE } else { HMONG_FEMALE });
            format!("{family} {} {given}", if male { "A" } else { "THỊ" })
        }
        Style::Kinh(_) if eth == Eth::Khmer && rng.gen_bool(0.6) => {
            if male {
                format!("{family} {}", one(rng, KHMER_MALE))
            } else {
                format!("{family} THỊ {}", one(rng, KHMER_FEMALE))
            }
        }
        Style::Kinh(_) => {
            let (middles, givens) = if male {
                (MIDDLE_MALE, GIVEN_MALE)
            } else {
                (MIDDLE_FEMALE, GIVEN_FEMALE)
            };
            let middle = one(rng, middles);
            let given = one(rng, givens);
            match rng.gen_range(0..100) {
                0..=3 => format!("{family} {given}"),
                4..=11 => {
                    // Two middle names: the common VĂN/THỊ first, then another.
                    let second = one(rng, &middles[3..]);
                    format!("{family} {} {second} {given}", middles[0])
                }
                _ => format!("{family} {middle} {given}"),
            }
        }
    }
}

fn ymd(d: NaiveDate) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day())
}

fn random_date<R: Rng>(rng: &mut R, from: NaiveDate, to: NaiveDate) -> NaiveDate {
    let span = (to - from).num_days().max(0);
    from + Duration::days(rng.gen_range(0..=span))
}

/// The date `dob` + `years` (29 February → 1 March).
fn anniversary(dob: NaiveDate, years: i32) -> NaiveDate {
    let y = dob.year() + years;
    NaiveDate::from_ymd_opt(y, dob.month(), dob.day())
        .or_else(|| NaiveDate::from_ymd_opt(y, 3, 1))
        .expect("valid date")
}

fn relative(rec: &CitizenRecord) -> Relative {
    Relative {
        full_name: rec.full_name.clone(),
        personal_id: rec.personal_id.clone(),
        nationality: NATIONALITY.into(),
    }
}

fn named(full_name: String) -> Relative {
    Relative {
        full_name,
        personal_id: String::new(),
        nationality: NATIONALITY.into(),
    }
}

/// A person while their household is being assembled.
struct Person {
    rec: CitizenRecord,
    family: &'static str,
    dob: NaiveDate,
    dod: Option<NaiveDate>,
}

struct Generator {
    rng: ChaCha8Rng,
    ids: HashSet<u64>,
    old_ids: HashSet<u64>,
    province_cdf: Vec<u32>,
    summary: GenerateSummary,
}

impl Generator {
    fn new(seed: u64) -> Self {
        let mut acc = 0;
        let province_cdf = PROVINCES
            .iter()
            .map(|(code, _)| {
                acc += match *code {
                    "079" => 90,
                    "001" => 80,
                    "074" | "075" | "040" | "038" | "031" => 30,
                    _ => 15,
                };
                acc
            })
            .collect();
        Generator {
            rng: ChaCha8Rng::seed_from_u64(seed),
            ids: HashSet::new(),
            old_ids: HashSet::new(),
            province_cdf,
            summary: GenerateSummary::default(),
        }
    }

    fn province(&mut self) -> usize {
        let x = self
            .rng
            .gen_range(0..*self.province_cdf.last().expect("provinces"));
        self.province_cdf.partition_point(|&c| c <= x)
    }

    fn ethnicity(&mut self, code: &str) -> Eth {
        let table = minorities(code);
        let mut x = self.rng.gen_range(0..1000);
        for &(eth, w) in table {
            if x < w {
                return eth;
            }
            x -= w;
        }
        Eth::Kinh
    }

    fn address(&mut self, province: usize, eth: Eth) -> Address {
        let (code, name) = PROVINCES[province];
        let urban = CITIES.contains(&code) || self.rng.gen_bool(0.3);
        let ward = one(&mut self.rng, WARDS);
        let line = if urban {
            format!(
                "Số {}, đường {}",
                self.rng.gen_range(1..400),
                one(&mut self.rng, STREETS)
            )
        } else {
            let n = self.rng.gen_range(1..20);
            match eth {
                Eth::Ede | Eth::GiaRai => format!("Buôn {n}"),
                Eth::Hmong | Eth::Thai | Eth::Dao => format!("Bản {n}"),
                _ if code >= "070" => format!("Ấp {n}"),
                _ => format!("Thôn {n}"),
            }
        };
        Address {
            line,
            ward: format!("{} {ward}", if urban { "Phường" } else { "Xã" }),
            district: String::new(),
            province: name.into(),
        }
    }

    fn place(&mut self, province: usize) -> String {
        let ward = one(&mut self.rng, WARDS);
        format!("{ward}, {}", PROVINCES[province].1)
    }

    /// A new unique 12-digit id for someone born in `year` of `sex`, registered in `province`.
    fn personal_id(&mut self, province: usize, year: i32, sex: Sex) -> String {
        let ppp: u64 = PROVINCES[province]
            .0
            .parse()
            .expect("numeric province code");
        let century = (year / 100 - 19) as u64;
        let g = century * 2 + u64::from(sex == Sex::Female);
        let prefix = ppp * 1_000_000_000 + g * 100_000_000 + (year % 100) as u64 * 1_000_000;
        loop {
            let id = prefix + self.rng.gen_range(0..1_000_000);
            if self.ids.insert(id) {
                return format!("{id:012}");
            }
        }
    }

    fn old_id(&mut self) -> String {
        loop {
            let id = self.rng.gen_range(10_000_000u64..400_000_000);
            if self.old_ids.insert(id) {
                return format!("{id:09}");
            }
        }
    }

    /// One person with identity, birth and the household's places filled in.
    #[allow(clippy::too_many_arguments)]
    fn person(
        &mut self,
        home: usize,
        eth: Eth,
        religion: &'static str,
        family: &'static str,
        sex: Sex,
        year: i32,
        local_birth: f64,
    ) -> Person {
        let style = eth.style();
        let family = if matches!(style, Style::Kinh(_)) {
            family_as(family, sex)
        } else {
            family
        };
        let full_name = full_name(&mut self.rng, style, eth, sex, family);
        let first = NaiveDate::from_ymd_opt(year, 1, 1).expect("valid year");
        let last = NaiveDate::from_ymd_opt(year, 12, 31)
            .expect("valid year")
            .min(today());
        let dob = random_date(&mut self.rng, first, last);
        let year_only = self.rng.gen_bool(0.03);
        let born_in = if self.rng.gen_bool(local_birth) {
            home
        } else {
            self.rng.gen_range(0..PROVINCES.len())
        };
        let personal_id = self.personal_id(born_in, year, sex);
        let dod = self
            .rng
            .gen_bool(0.02)
            .then(|| random_date(&mut self.rng, dob, today()));
        let religion = if self.rng.gen_bool(0.1) {
            *pick(&mut self.rng, eth.religions())
        } else {
            religion
        };
        let blood_group = if self.rng.gen_bool(0.45) {
            String::new()
        } else {
            (*pick(&mut self.rng, &[("O", 42), ("B", 30), ("A", 21), ("AB", 7)])).to_string()
        };
        let place_of_birth = self.place(born_in);
        let registration = format!("UBND {}", self.place(born_in));
        let mut rec = CitizenRecord {
            personal_id,
            full_name,
            date_of_birth: if year_only {
                format!("{year:04}")
            } else {
                ymd(dob)
            },
            sex: sex as i32,
            place_of_birth,
            birth_registration_place: registration,
            ethnicity: eth.name().into(),
            religion: religion.into(),
            nationality: NATIONALITY.into(),
            blood_group,
            date_of_death: dod.map(ymd).unwrap_or_default(),
            marital_status: MaritalStatus::Single as i32,
            ..Default::default()
        };
        let adult = anniversary(dob, 18) <= today();
        if adult && self.rng.gen_bool(0.15) {
            rec.email = format!("u{:08x}@example.com", self.rng.gen::<u32>());
        }
        if adult && self.rng.gen_bool(0.01) {
            let alias = full_name_alias(&mut self.rng, &rec.full_name);
            rec.other_names.push(alias);
        }
        Person {
            rec,
            family,
            dob,
            dod,
        }
    }

    /// Identity cards: the CCCD from 14 (issued 2016–2024), and for some people
    /// born early enough an old CMND (issued 1995–2015, valid 15 years).
    fn cards(&mut self, p: &mut Person, province: usize) {
        let end = p.dod.unwrap_or_else(today);
        let fourteen = anniversary(p.dob, 14);
        let cmnd_from = fourteen.max(NaiveDate::from_ymd_opt(1995, 1, 1).expect("date"));
        let cmnd_to = end.min(NaiveDate::from_ymd_opt(2015, 12, 31).expect("date"));
        if cmnd_from <= cmnd_to && self.rng.gen_bool(0.42) {
            let issued = random_date(&mut self.rng, cmnd_from, cmnd_to);
            let (code, name) = PROVINCES[province];
            let kind = if CITIES.contains(&code) {
                "Thành phố"
            } else {
                "Tỉnh"
            };
            p.rec.old_id_number = self.old_id();
            p.rec.id_cards.push(IdCard {
                number: p.rec.old_id_number.clone(),
                issued_on: ymd(issued),
                issued_by: format!("Công an {kind} {name}"),
                expires_on: ymd(anniversary(issued, 15)),
            });
        }
        let from = fourteen.max(NaiveDate::from_ymd_opt(2016, 1, 1).expect("date"));
        let to = end.min(NaiveDate::from_ymd_opt(2024, 12, 31).expect("date"));
        if from <= to {
            let issued = random_date(&mut self.rng, from, to);
            let age = issued.year() - p.dob.year();
            // Valid to 25, 40 or 60; a card issued within 2 years of one of these
            // ages runs to the next; none expires after 58.
            let expires = [25, 40, 60]
                .into_iter()
                .find(|m| age < m - 2)
                .map(|m| ymd(anniversary(p.dob, m)))
                .unwrap_or_default();
            p.rec.id_cards.push(IdCard {
                number: p.rec.personal_id.clone(),
                issued_on: ymd(issued),
                issued_by: CCCD_ISSUER.into(),
                expires_on: expires,
            });
        }
    }

    /// One household of up to `max` people, fully linked.
    fn household(&mut self, max: u64) -> Vec<CitizenRecord> {
        let home = self.province();
        let eth = self.ethnicity(PROVINCES[home].0);
        let style = eth.style();
        let religion = *pick(&mut self.rng, eth.religions());
        let size = (*pick(
            &mut self.rng,
            &[(1u64, 15), (2, 20), (3, 25), (4, 22), (5, 11), (6, 7)],
        ))
        .min(max);
        let has_spouse = size >= 2 && self.rng.gen_bool(0.85);
        let has_grandma = size >= 4 && self.rng.gen_bool(0.15);
        let n_children = size - 1 - u64::from(has_spouse) - u64::from(has_grandma);
        let head_year = if has_grandma {
            self.rng.gen_range(1958..=1990)
        } else if n_children > 0 {
            self.rng.gen_range(1950..=2000)
        } else {
            self.rng.gen_range(1940..=2005)
        };
        let head_sex = if has_spouse {
            if self.rng.gen_bool(0.8) {
                Sex::Male
            } else {
                Sex::Female
            }
        } else if self.rng.gen_bool(0.5) {
            Sex::Male
        } else {
            Sex::Female
        };
        let other = |s: Sex| {
            if s == Sex::Male {
                Sex::Female
            } else {
                Sex::Male
            }
        };

        let head_family = random_family(&mut self.rng, style, head_sex);
        let mut people =
            vec![self.person(home, eth, religion, head_family, head_sex, head_year, 0.8)];
        let mut spouse = None;
        if has_spouse {
            let s = other(head_sex);
            let offset = self.rng.gen_range(-1..=7);
            let year = if head_sex == Sex::Male {
                head_year + offset
            } else {
                head_year - offset
            }
            .min(2005);
            let mut family = random_family(&mut self.rng, style, s);
            if style == Style::Hmong {
                while family == head_family {
                    family = random_family(&mut self.rng, style, s);
                }
            }
            people.push(self.person(home, eth, religion, family, s, year, 0.8));
            spouse = Some(people.len() - 1);
        }
        let mut grandma = None;
        if has_grandma {
            let year = head_year - self.rng.gen_range(20..=35);
            let family = if matches!(style, Style::Ede | Style::Jrai) {
                people[0].family
            } else {
                random_family(&mut self.rng, style, Sex::Female)
            };
            people.push(self.person(home, eth, religion, family, Sex::Female, year, 0.7));
            grandma = Some(people.len() - 1);
        }

        // Parents of the children: in the household, or absent (named only).
        let (father, mother) = match (head_sex, spouse) {
            (Sex::Male, Some(s)) => (Some(0), Some(s)),
            (_, Some(s)) => (Some(s), Some(0)),
            (Sex::Male, None) => (Some(0), None),
            _ => (None, Some(0)),
        };
        let mut absent_father = None;
        let mut absent_mother = None;
        let father_family = match father {
            Some(i) => people[i].family,
            None if n_children > 0 => {
                let f = random_family(&mut self.rng, style, Sex::Male);
                absent_father = Some(full_name(&mut self.rng, style, eth, Sex::Male, f));
                f
            }
            None => "",
        };
        let mother_family = match mother {
            Some(i) => people[i].family,
            None if n_children > 0 => {
                let f = random_family(&mut self.rng, style, Sex::Female);
                absent_mother = Some(full_name(&mut self.rng, style, eth, Sex::Female, f));
                f
            }
            None => "",
        };
        let mother_year = mother.map_or(head_year, |m| people[m].dob.year());
        let mut child_years: Vec<i32> = (0..n_children)
            .map(|_| (mother_year + self.rng.gen_range(19..=40)).min(2025))
            .collect();
        child_years.sort_unstable();
        let mut children = Vec::new();
        for year in child_years {
            let sex = if self.rng.gen_bool(0.51) {
                Sex::Male
            } else {
                Sex::Female
            };
            let family = match style {
                Style::Ede | Style::Jrai => mother_family,
                _ => father_family,
            };
            people.push(self.person(home, eth, religion, family, sex, year, 0.95));
            children.push(people.len() - 1);
        }

        // Cards and old ids.
        for p in &mut people {
            let born_in = PROVINCES
                .iter()
                .position(|(c, _)| p.rec.personal_id.starts_with(c))
                .unwrap_or(home);
            self.cards(p, born_in);
        }

        // Places of origin follow the lineage.
        for (i, p) in people.iter_mut().enumerate() {
            if !children.contains(&i) {
                let province = self.rng.gen_range(0..PROVINCES.len());
                p.rec.place_of_origin = self.place(province);
            }
        }
        let lineage = match style {
            Style::Ede | Style::Jrai => mother,
            _ => father,
        };
        let origin = match lineage {
            Some(i) => people[i].rec.place_of_origin.clone(),
            None => {
                let province = self.rng.gen_range(0..PROVINCES.len());
                self.place(province)
            }
        };
        for &c in &children {
            people[c].rec.place_of_origin = origin.clone();
        }

        // Family links, both ways.
        let rel: Vec<Relative> = people.iter().map(|p| relative(&p.rec)).collect();
        if let Some(s) = spouse {
            people[0].rec.spouse = Some(rel[s].clone());
            people[s].rec.spouse = Some(rel[0].clone());
            for (a, b) in [(0, s), (s, 0)] {
                people[a].rec.marital_status = if people[b].dod.is_some() && people[a].dod.is_none()
                {
                    MaritalStatus::Widowed
                } else {
                    MaritalStatus::Married
                } as i32;
            }
        } else if people[0].dob.year() < 1995 {
            let status = if n_children > 0 {
                *pick(
                    &mut self.rng,
                    &[(MaritalStatus::Divorced, 1), (MaritalStatus::Widowed, 1)],
                )
            } else {
                *pick(
                    &mut self.rng,
                    &[
                        (MaritalStatus::Single, 3),
                        (MaritalStatus::Divorced, 1),
                        (MaritalStatus::Widowed, 1),
                    ],
                )
            };
            people[0].rec.marital_status = status as i32;
        }
        for &c in &children {
            people[c].rec.father = match father {
                Some(f) => Some(rel[f].clone()),
                None => absent_father.clone().map(named),
            };
            people[c].rec.mother = match mother {
                Some(m) => Some(rel[m].clone()),
                None => absent_mother.clone().map(named),
            };
            let minor = anniversary(people[c].dob, 18) > today();
            if minor && people[c].dod.is_none() {
                people[c].rec.legal_representative = father.or(mother).map(|p| rel[p].clone());
            }
        }
        for parent in [father, mother].into_iter().flatten() {
            people[parent].rec.children = children.iter().map(|&c| rel[c].clone()).collect();
        }
        if let Some(g) = grandma {
            people[0].rec.mother = Some(rel[g].clone());
            people[g].rec.children = vec![rel[0].clone()];
            people[g].rec.marital_status = MaritalStatus::Widowed as i32;
        }
        // Parents outside the population, named only.
        for (i, p) in people.iter_mut().enumerate() {
            if children.contains(&i) {
                continue;
            }
            let own_family = p.family;
            if p.rec.father.is_none() {
                let f = match style {
                    Style::Ede | Style::Jrai => random_family(&mut self.rng, style, Sex::Male),
                    _ => family_as(own_family, Sex::Male),
                };
                p.rec.father = Some(named(full_name(&mut self.rng, style, eth, Sex::Male, f)));
            }
            if p.rec.mother.is_none() {
                let f = match style {
                    Style::Ede | Style::Jrai => own_family,
                    _ => random_family(&mut self.rng, style, Sex::Female),
                };
                p.rec.mother = Some(named(full_name(&mut self.rng, style, eth, Sex::Female, f)));
            }
        }

        // Residence and household.
        self.summary.households += 1;
        let seq = self.summary.households;
        let code = PROVINCES[home].0;
        let household_id = format!("HK{code}{seq:08}");
        let residence_file = format!("HS{code}{seq:08}");
        let address = self.address(home, eth);
        let head_ref = (
            people[0].rec.personal_id.clone(),
            people[0].rec.full_name.clone(),
        );
        for (i, p) in people.iter_mut().enumerate() {
            let relation = if i == 0 {
                "head"
            } else if Some(i) == spouse {
                "spouse"
            } else if Some(i) == grandma {
                "mother"
            } else {
                "child"
            };
            p.rec.household = Some(HouseholdRef {
                household_id: household_id.clone(),
                head_personal_id: head_ref.0.clone(),
                head_full_name: head_ref.1.clone(),
                relation_to_head: relation.into(),
            });
            p.rec.permanent_residence = Some(address.clone());
            p.rec.residence_file_number = residence_file.clone();
            p.rec.current_residence = Some(address.clone());
            let adult = anniversary(p.dob, 18) <= today();
            if i != 0 && adult && p.dod.is_none() && self.rng.gen_bool(0.05) {
                let city = if self.rng.gen_bool(0.5) { "001" } else { "079" };
                let city = PROVINCES.iter().position(|(c, _)| *c == city).unwrap_or(0);
                let away = self.address(city, Eth::Kinh);
                let from = random_date(
                    &mut self.rng,
                    NaiveDate::from_ymd_opt(2023, 7, 1).expect("date"),
                    today(),
                );
                p.rec.temporary_residence = Some(away.clone());
                p.rec.current_residence = Some(away);
                p.rec.temporary_absence = format!(
                    "Tạm vắng từ {} đến {}",
                    ymd(from),
                    ymd(anniversary(from, 2))
                );
            }
        }

        let mut out = Vec::with_capacity(people.len());
        for p in people {
            let mut rec = p.rec;
            self.summary.count += 1;
            rec.version = self.summary.count;
            self.summary.deceased += u64::from(!rec.date_of_death.is_empty());
            self.summary.year_only += u64::from(rec.date_of_birth.len() == 4);
            self.summary.with_old_id += u64::from(!rec.old_id_number.is_empty());
            out.push(rec);
        }
        out
    }
}

/// An alternative name: the same family name with another given name.
fn full_name_alias<R: Rng>(rng: &mut R, name: &str) -> String {
    let family = name.split(' ').next().unwrap_or(name);
    format!("{family} {}", one(rng, GIVEN_MALE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn records(count: u64, seed: u64) -> (Vec<u8>, Vec<CitizenRecord>, GenerateSummary) {
        let mut buf = Vec::new();
        let summary = generate(count, seed, &mut buf).unwrap();
        let recs: Vec<CitizenRecord> = std::str::from_utf8(&buf)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (buf, recs, summary)
    }

    #[test]
    fn deterministic_for_a_seed() {
        let (a, _, sa) = records(2_000, 42);
        let (b, _, sb) = records(2_000, 42);
        let (c, _, _) = records(2_000, 43);
        assert_eq!(a, b);
        assert_eq!(sa, sb);
        assert_ne!(a, c);
    }

    #[test]
    fn ids_are_well_formed_and_unique() {
        let (_, recs, summary) = records(20_000, 7);
        assert_eq!(recs.len(), 20_000);
        assert_eq!(summary.count, 20_000);
        let mut ids = HashSet::new();
        let mut old = HashSet::new();
        for r in &recs {
            let id = &r.personal_id;
            assert_eq!(id.len(), 12, "{id}");
            assert!(id.bytes().all(|b| b.is_ascii_digit()));
            assert!(PROVINCES.iter().any(|(c, _)| id.starts_with(c)), "{id}");
            let year: i32 = r.date_of_birth[..4].parse().unwrap();
            let g = id.as_bytes()[3] - b'0';
            let female = r.sex == Sex::Female as i32;
            assert_eq!(g % 2 == 1, female, "{id}");
            assert_eq!(i32::from(g / 2), year / 100 - 19, "{id}");
            assert_eq!(id[4..6].parse::<i32>().unwrap(), year % 100, "{id}");
            assert!(ids.insert(id.clone()), "duplicate {id}");
            if !r.old_id_number.is_empty() {
                assert_eq!(r.old_id_number.len(), 9);
                assert!(old.insert(r.old_id_number.clone()));
            }
            assert_eq!(r.nationality, "Việt Nam");
            assert_eq!(r.full_name, r.full_name.to_uppercase());
            assert!(!r.ethnicity.is_empty() && !r.religion.is_empty());
            assert!(r.version >= 1);
            assert!(r.date_of_birth.len() == 4 || r.date_of_birth.len() == 10);
        }
        // Rough proportions.
        let pct = |n: u64| n as f64 * 100.0 / summary.count as f64;
        assert!((1.5..5.0).contains(&pct(summary.year_only)), "{summary:?}");
        assert!((1.0..3.5).contains(&pct(summary.deceased)), "{summary:?}");
        assert!(
            (20.0..40.0).contains(&pct(summary.with_old_id)),
            "{summary:?}"
        );
        let kinh = recs.iter().filter(|r| r.ethnicity == "Kinh").count();
        assert!(kinh * 100 / recs.len() > 75);
        let none = recs.iter().filter(|r| r.religion == "Không").count();
        assert!(none * 100 / recs.len() > 60);
        // The naming conventions all appear.
        let has = |pred: &dyn Fn(&str) -> bool| recs.iter().any(|r| pred(&r.full_name));
        assert!(has(&|n| n.starts_with("H'") || n.starts_with("Y ")));
        assert!(has(&|n| n.contains(" A ")));
        assert!(has(
            &|n| n.starts_with("TÔN NỮ ") || n.starts_with("NGUYỄN PHÚC ")
        ));
    }

    #[test]
    fn family_links_are_consistent() {
        let (_, recs, summary) = records(20_000, 3);
        let by_id: HashMap<&str, &CitizenRecord> =
            recs.iter().map(|r| (r.personal_id.as_str(), r)).collect();
        let lists = |parent: &CitizenRecord, child: &str| {
            parent.children.iter().any(|c| c.personal_id == child)
        };
        let mut households = HashSet::new();
        for r in &recs {
            for parent in [&r.father, &r.mother].into_iter().flatten() {
                if !parent.personal_id.is_empty() {
                    let p = by_id[parent.personal_id.as_str()];
                    assert_eq!(p.full_name, parent.full_name);
                    assert!(
                        lists(p, &r.personal_id),
                        "{} not child of {}",
                        r.personal_id,
                        p.personal_id
                    );
                }
            }
            if let Some(f) = &r.father {
                if let Some(p) = by_id.get(f.personal_id.as_str()) {
                    assert_eq!(p.sex, Sex::Male as i32);
                }
            }
            for c in &r.children {
                let child = by_id[c.personal_id.as_str()];
                let named = |rel: &Option<Relative>| {
                    rel.as_ref().is_some_and(|p| p.personal_id == r.personal_id)
                };
                assert!(named(&child.father) || named(&child.mother));
            }
            match MaritalStatus::try_from(r.marital_status).unwrap() {
                MaritalStatus::Married => {
                    let s = by_id[r.spouse.as_ref().unwrap().personal_id.as_str()];
                    assert_eq!(s.spouse.as_ref().unwrap().personal_id, r.personal_id);
                    assert_ne!(s.sex, r.sex);
                }
                MaritalStatus::Widowed if r.spouse.is_some() => {
                    let s = by_id[r.spouse.as_ref().unwrap().personal_id.as_str()];
                    assert!(!s.date_of_death.is_empty());
                }
                _ => assert!(r.spouse.is_none(), "{}", r.personal_id),
            }
            if !r.date_of_death.is_empty() {
                assert!(r.date_of_death.as_str() >= r.date_of_birth.as_str());
                assert!(r.date_of_death.as_str() <= "2025-06-30");
            }
            let h = r.household.as_ref().unwrap();
            let head = by_id[h.head_personal_id.as_str()];
            assert_eq!(head.household.as_ref().unwrap().relation_to_head, "head");
            assert_eq!(
                head.household.as_ref().unwrap().household_id,
                h.household_id
            );
            assert_eq!(r.permanent_residence, head.permanent_residence);
            let province = &r.permanent_residence.as_ref().unwrap().province;
            assert!(PROVINCES.iter().any(|(_, n)| n == province));
            households.insert(h.household_id.clone());
        }
        assert_eq!(households.len() as u64, summary.households);
    }

    #[test]
    fn file_output_matches_writer_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pop.jsonl");
        let s = generate_to_file(500, 1, &path).unwrap();
        let (buf, _, s2) = records(500, 1);
        assert_eq!(std::fs::read(&path).unwrap(), buf);
        assert_eq!(s, s2);
    }
}
