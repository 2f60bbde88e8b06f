//! Access logs from mesh config (`accessLogFile`, `accessLogEncoding`, `accessLogFormat`),
//! on every HTTP connection manager and TCP proxy.

use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog, access_log};
use envoy_types::pb::google::protobuf::Any;
use prost::encoding::{WireType, encode_key, encode_varint};
use strait_api::MeshConfig;
use strait_api::mesh_config::AccessLogEncoding;

const FILE_ACCESS_LOG_TYPE: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog";

/// The default text line: the same fields Istio's default format shows.
const TEXT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// The default JSON object's fields, sorted by key.
const JSON_FIELDS: &[(&str, &str)] = &[
    ("authority", "%REQ(:AUTHORITY)%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    (
        "connection_termination_details",
        "%CONNECTION_TERMINATION_DETAILS%",
    ),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("duration", "%DURATION%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("route_name", "%ROUTE_NAME%"),
    ("start_time", "%START_TIME%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER_RAW%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    (
        "upstream_service_time",
        "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    ),
    (
        "upstream_transport_failure_reason",
        "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    ),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
];

fn put_bytes(tag: u32, bytes: &[u8], out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// A `FileAccessLog` with a JSON format. Encoded by hand: prost writes `Struct` maps in hash
/// order, which would change the listener's bytes (and version) on every rebuild.
fn file_json(path: &str) -> Vec<u8> {
    let mut fields = Vec::new();
    for (k, v) in JSON_FIELDS {
        let mut value = Vec::new();
        put_bytes(3, v.as_bytes(), &mut value); // Value.string_value
        let mut entry = Vec::new();
        put_bytes(1, k.as_bytes(), &mut entry);
        put_bytes(2, &value, &mut entry);
        put_bytes(1, &entry, &mut fields); // Struct.fields
    }
    let mut format = Vec::new();
    put_bytes(2, &fields, &mut format); // SubstitutionFormatString.json_format
    let mut out = Vec::new();
    put_bytes(1, path.as_bytes(), &mut out); // FileAccessLog.path
    put_bytes(5, &format, &mut out); // FileAccessLog.log_format
    out
}

fn file_text(path: &str, format: &str) -> Vec<u8> {
    let mut source = Vec::new();
    put_bytes(3, format.as_bytes(), &mut source); // DataSource.inline_string
    let mut fmt = Vec::new();
    put_bytes(5, &source, &mut fmt); // SubstitutionFormatString.text_format_source
    let mut out = Vec::new();
    put_bytes(1, path.as_bytes(), &mut out);
    put_bytes(5, &fmt, &mut out);
    out
}

/// The access logs every listener writes, per mesh config (none when `accessLogFile` is
/// empty).
pub fn access_logs(mesh: &MeshConfig) -> Vec<AccessLog> {
    if mesh.access_log_file.is_empty() {
        return Vec::new();
    }
    let value = match mesh.access_log_encoding {
        AccessLogEncoding::Json => file_json(&mesh.access_log_file),
        AccessLogEncoding::Text => {
            let format = if mesh.access_log_format.is_empty() {
                TEXT_FORMAT.to_string()
            } else if mesh.access_log_format.ends_with('\n') {
                mesh.access_log_format.clone()
            } else {
                format!("{}\n", mesh.access_log_format)
            };
            file_text(&mesh.access_log_file, &format)
        }
    };
    vec![AccessLog {
        name: "envoy.access_loggers.file".to_string(),
        config_type: Some(access_log::ConfigType::TypedConfig(Any {
            type_url: FILE_ACCESS_LOG_TYPE.to_string(),
            value,
        })),
        ..Default::default()
    }]
}

/// Adds the mesh's access logs to every HTTP connection manager and TCP proxy of `listeners`.
pub fn apply(
    listeners: &mut [envoy_types::pb::envoy::config::listener::v3::Listener],
    mesh: &MeshConfig,
) {
    use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
    use prost::Message;
    let logs = access_logs(mesh);
    if logs.is_empty() {
        return;
    }
    for l in listeners {
        let chains = l
            .filter_chains
            .iter_mut()
            .chain(l.default_filter_chain.iter_mut());
        for f in chains.flat_map(|fc| fc.filters.iter_mut()) {
            let Some(ConfigType::TypedConfig(any)) = f.config_type.as_mut() else {
                continue;
            };
            if any.type_url.ends_with(".HttpConnectionManager") {
                if let Ok(mut hcm) = HttpConnectionManager::decode(any.value.as_slice()) {
                    hcm.access_log = logs.clone();
                    any.value = hcm.encode_to_vec();
                }
            } else if any.type_url.ends_with(".TcpProxy")
                && let Ok(mut tcp) = TcpProxy::decode(any.value.as_slice())
            {
                tcp.access_log = logs.clone();
                any.value = tcp.encode_to_vec();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format;
    use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
        FileAccessLog, file_access_log,
    };
    use prost::Message;

    #[test]
    fn hand_encoding_decodes_as_the_real_messages() {
        let mesh = MeshConfig {
            access_log_file: "/dev/stdout".into(),
            access_log_encoding: AccessLogEncoding::Json,
            ..Default::default()
        };
        let logs = access_logs(&mesh);
        let Some(access_log::ConfigType::TypedConfig(any)) = &logs[0].config_type else {
            panic!("typed")
        };
        let f = FileAccessLog::decode(any.value.as_slice()).expect("decodes");
        assert_eq!(f.path, "/dev/stdout");
        let Some(file_access_log::AccessLogFormat::LogFormat(sfs)) = f.access_log_format else {
            panic!("format")
        };
        let Some(Format::JsonFormat(s)) = sfs.format else {
            panic!("json")
        };
        assert_eq!(s.fields.len(), JSON_FIELDS.len());
        assert_eq!(access_logs(&mesh), logs, "same bytes every time");

        let text = access_logs(&MeshConfig {
            access_log_file: "/tmp/a.log".into(),
            access_log_format: "%RESPONSE_CODE%".into(),
            ..Default::default()
        });
        let Some(access_log::ConfigType::TypedConfig(any)) = &text[0].config_type else {
            panic!("typed")
        };
        let f = FileAccessLog::decode(any.value.as_slice()).expect("decodes");
        let Some(file_access_log::AccessLogFormat::LogFormat(sfs)) = f.access_log_format else {
            panic!("format")
        };
        assert!(matches!(sfs.format, Some(Format::TextFormatSource(_))));
        assert!(access_logs(&MeshConfig::default()).is_empty());
    }
}
