//! The console's words in Vietnamese and English. The operator picks one (`?lang=vi` or
//! `?lang=en`, kept in a cookie); Vietnamese is the default.

/// A language the console speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// Tiếng Việt.
    Vi,
    /// English.
    En,
}

impl Lang {
    /// The language a `lang` value names (`vi`, `en`), if any.
    pub fn parse(value: &str) -> Option<Lang> {
        match value {
            "vi" => Some(Lang::Vi),
            "en" => Some(Lang::En),
            _ => None,
        }
    }

    /// Its code, for `<html lang>` and the cookie.
    pub fn code(self) -> &'static str {
        match self {
            Lang::Vi => "vi",
            Lang::En => "en",
        }
    }

    /// Its words.
    pub fn labels(self) -> &'static Labels {
        match self {
            Lang::Vi => &VI,
            Lang::En => &EN,
        }
    }
}

/// Every word a page shows.
#[derive(Debug)]
pub struct Labels {
    /// The console's name.
    pub title: &'static str,
    /// Navigation: live records.
    pub live: &'static str,
    /// Navigation: search.
    pub search: &'static str,
    /// Navigation: integrity.
    pub integrity: &'static str,
    /// Navigation: health.
    pub health: &'static str,
    /// Navigation: a citizen's history.
    pub citizen: &'static str,
    /// The other language's name, for the switch.
    pub other_language: &'static str,
    /// Signed in as.
    pub signed_in_as: &'static str,
    /// The button that ends the session.
    pub sign_out: &'static str,
    /// Column and field names.
    pub time: &'static str,
    /// The gateway node.
    pub node: &'static str,
    /// The client identity.
    pub client: &'static str,
    /// The RPC.
    pub rpc: &'static str,
    /// The procedure.
    pub procedure: &'static str,
    /// The dossier (as its pseudonym).
    pub dossier: &'static str,
    /// The dossier number typed into a search (the gateway pseudonymises it).
    pub dossier_number: &'static str,
    /// The subject's pseudonym.
    pub subject: &'static str,
    /// The outcome.
    pub outcome: &'static str,
    /// The cache outcome.
    pub cache: &'static str,
    /// The latency.
    pub latency: &'static str,
    /// Fields disclosed.
    pub fields: &'static str,
    /// The personal id.
    pub personal_id: &'static str,
    /// From (time).
    pub from: &'static str,
    /// To (time).
    pub to: &'static str,
    /// Any value.
    pub any: &'static str,
    /// Pause the live view.
    pub pause: &'static str,
    /// Resume it.
    pub resume: &'static str,
    /// Records per second.
    pub per_second: &'static str,
    /// Records shown.
    pub shown: &'static str,
    /// Records held back while paused.
    pub held: &'static str,
    /// The verification section's heading.
    pub verification: &'static str,
    /// The index is not connected (or not configured).
    pub index_not_connected: &'static str,
    /// Points plotted.
    pub points: &'static str,
    /// The last minute's mean.
    pub last_minute: &'static str,
    /// Find.
    pub find: &'static str,
    /// Next page.
    pub next_page: &'static str,
    /// Previous page.
    pub previous_page: &'static str,
    /// Page.
    pub page: &'static str,
    /// No records.
    pub no_records: &'static str,
    /// Detail of one record.
    pub detail: &'static str,
    /// Its place in the chain.
    pub chain_position: &'static str,
    /// The latest signed checkpoint.
    pub checkpoint: &'static str,
    /// Its signature.
    pub signature: &'static str,
    /// The signing key.
    pub public_key: &'static str,
    /// The witness.
    pub witness: &'static str,
    /// Witness lag.
    pub witness_lag: &'static str,
    /// Witness alarm.
    pub witness_alarm: &'static str,
    /// No witness configured.
    pub no_witness: &'static str,
    /// The central index.
    pub index: &'static str,
    /// Run verify.
    pub run_verify: &'static str,
    /// Verified intact.
    pub intact: &'static str,
    /// Broken.
    pub broken: &'static str,
    /// Not verified yet.
    pub not_verified: &'static str,
    /// Records.
    pub records: &'static str,
    /// Segments.
    pub segments: &'static str,
    /// Checkpoints.
    pub checkpoints: &'static str,
    /// Unsigned tail.
    pub unsigned_tail: &'static str,
    /// Requests per second.
    pub requests_per_second: &'static str,
    /// By code.
    pub by_code: &'static str,
    /// By client.
    pub by_client: &'static str,
    /// Latency percentiles.
    pub latency_p50_p99: &'static str,
    /// Cache hit ratio.
    pub cache_hit_ratio: &'static str,
    /// Breaker.
    pub breaker: &'static str,
    /// Audit queue depth.
    pub audit_queue: &'static str,
    /// Records per audit write.
    pub batch_records: &'static str,
    /// TLS refusals.
    pub tls_refusals: &'static str,
    /// Certificate expiry.
    pub certificate_expiry: &'static str,
    /// Days.
    pub days: &'static str,
    /// The last hour.
    pub last_hour: &'static str,
    /// No metrics yet.
    pub no_samples: &'static str,
    /// As the operator sees it.
    pub operator_view: &'static str,
    /// As the citizen sees it.
    pub citizen_view: &'static str,
    /// Agency.
    pub agency: &'static str,
    /// Action.
    pub action: &'static str,
    /// As a relative.
    pub as_relative: &'static str,
    /// Report source.
    pub source: &'static str,
    /// The gateway refused or failed.
    pub gateway_error: &'static str,
    /// Every page is an audited call.
    pub audited_note: &'static str,
}

/// Tiếng Việt.
pub static VI: Labels = Labels {
    title: "Bảng điều khiển popgw",
    live: "Trực tiếp",
    search: "Tra cứu",
    integrity: "Toàn vẹn",
    health: "Tình trạng",
    citizen: "Lịch sử công dân",
    other_language: "English",
    signed_in_as: "Định danh vận hành",
    sign_out: "Đăng xuất",
    time: "Thời gian (UTC+7)",
    node: "Nút",
    client: "Bên gọi",
    rpc: "Lệnh gọi",
    procedure: "Thủ tục",
    dossier: "Hồ sơ (bút danh)",
    dossier_number: "Số hồ sơ",
    subject: "Chủ thể (bút danh)",
    outcome: "Kết quả",
    cache: "Bộ đệm",
    latency: "Độ trễ",
    fields: "Trường dữ liệu",
    personal_id: "Số định danh cá nhân",
    from: "Từ",
    to: "Đến",
    any: "(tất cả)",
    pause: "Tạm dừng",
    resume: "Tiếp tục",
    per_second: "bản ghi/giây",
    shown: "đang hiển thị",
    held: "đang giữ lại",
    verification: "Kiểm tra nhật ký kiểm toán",
    index_not_connected: "không kết nối (hoặc không cấu hình)",
    points: "điểm",
    last_minute: "trung bình một phút qua",
    find: "Tìm",
    next_page: "Trang sau",
    previous_page: "Trang trước",
    page: "Trang",
    no_records: "Không có bản ghi nào.",
    detail: "Chi tiết",
    chain_position: "Vị trí trong chuỗi",
    checkpoint: "Điểm kiểm tra đã ký gần nhất",
    signature: "Chữ ký",
    public_key: "Khóa công khai",
    witness: "Nhân chứng (NATS)",
    witness_lag: "Độ trễ nhân chứng",
    witness_alarm: "Cảnh báo nhân chứng",
    no_witness: "Không cấu hình nhân chứng",
    index: "Chỉ mục tập trung",
    run_verify: "Kiểm tra toàn vẹn ngay",
    intact: "Toàn vẹn",
    broken: "BỊ PHÁ VỠ",
    not_verified: "Chưa kiểm tra trong phiên này",
    records: "Bản ghi",
    segments: "Tệp phân đoạn",
    checkpoints: "Điểm kiểm tra",
    unsigned_tail: "Bản ghi sau điểm kiểm tra",
    requests_per_second: "Yêu cầu/giây",
    by_code: "Theo mã gRPC",
    by_client: "Theo bên gọi",
    latency_p50_p99: "Độ trễ p50 / p99 (ms)",
    cache_hit_ratio: "Tỷ lệ trúng bộ đệm",
    breaker: "Cầu dao thượng nguồn",
    audit_queue: "Hàng đợi nhật ký",
    batch_records: "Bản ghi mỗi lần ghi",
    tls_refusals: "Từ chối TLS theo lý do",
    certificate_expiry: "Hạn chứng thư",
    days: "ngày",
    last_hour: "một giờ qua",
    no_samples: "Chưa có số liệu.",
    operator_view: "Người vận hành thấy (kể cả từ chối)",
    citizen_view: "Công dân thấy (báo cáo truy cập)",
    agency: "Cơ quan",
    action: "Hành động",
    as_relative: "với tư cách người thân",
    source: "Nguồn",
    gateway_error: "Cổng trả lỗi",
    audited_note: "Mỗi trang là một lệnh gọi được ghi nhật ký với định danh của bạn.",
};

/// English.
pub static EN: Labels = Labels {
    title: "popgw console",
    live: "Live",
    search: "Search",
    integrity: "Integrity",
    health: "Health",
    citizen: "Citizen's history",
    other_language: "Tiếng Việt",
    signed_in_as: "Operator identity",
    sign_out: "Sign out",
    time: "Time (UTC+7)",
    node: "Node",
    client: "Client",
    rpc: "RPC",
    procedure: "Procedure",
    dossier: "Dossier (pseudonym)",
    dossier_number: "Dossier number",
    subject: "Subject (pseudonym)",
    outcome: "Outcome",
    cache: "Cache",
    latency: "Latency",
    fields: "Fields",
    personal_id: "Personal id",
    from: "From",
    to: "To",
    any: "(any)",
    pause: "Pause",
    resume: "Resume",
    per_second: "records/s",
    shown: "shown",
    held: "held back",
    verification: "Audit log verification",
    index_not_connected: "not connected (or not configured)",
    points: "points",
    last_minute: "mean of the last minute",
    find: "Search",
    next_page: "Next page",
    previous_page: "Previous page",
    page: "Page",
    no_records: "No records.",
    detail: "Detail",
    chain_position: "Chain position",
    checkpoint: "Latest signed checkpoint",
    signature: "Signature",
    public_key: "Public key",
    witness: "Witness (NATS)",
    witness_lag: "Witness lag",
    witness_alarm: "Witness alarm",
    no_witness: "No witness configured",
    index: "Central index",
    run_verify: "Verify now",
    intact: "Intact",
    broken: "BROKEN",
    not_verified: "Not verified in this session",
    records: "Records",
    segments: "Segments",
    checkpoints: "Checkpoints",
    unsigned_tail: "Records after the checkpoint",
    requests_per_second: "Requests/s",
    by_code: "By gRPC code",
    by_client: "By client",
    latency_p50_p99: "Latency p50 / p99 (ms)",
    cache_hit_ratio: "Cache hit ratio",
    breaker: "Upstream breaker",
    audit_queue: "Audit queue depth",
    batch_records: "Records per audit write",
    tls_refusals: "TLS refusals by reason",
    certificate_expiry: "Certificate expiry",
    days: "days",
    last_hour: "last hour",
    no_samples: "No metrics yet.",
    operator_view: "What the operator sees (refusals included)",
    citizen_view: "What the citizen sees (access report)",
    agency: "Agency",
    action: "Action",
    as_relative: "as a relative",
    source: "Source",
    gateway_error: "The gateway answered with an error",
    audited_note: "Every page is an audited call with your identity.",
};
