//! One query, one answer: from the host's hosts file, else from the host's nameservers.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};

use super::{HostResolver, Transport};

/// How long a hosts-file answer may be cached by the guest.
const HOSTS_TTL: u32 = 5;
/// How long one upstream nameserver gets to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// The reply to the DNS message `query`, which came over `transport`; `None` for what is
/// no query (dropped).
pub fn answer(query: &[u8], resolver: &HostResolver, offline: bool, transport: Transport) -> Option<Vec<u8>> {
    let message = Message::from_vec(query).ok()?;
    if message.message_type() != MessageType::Query {
        return None;
    }
    // Only a plain question goes on: no update, notify or other operation, nothing but
    // one question of class IN, and it is written anew (what the guest sent is not).
    if message.op_code() != OpCode::Query {
        return reply(&message, ResponseCode::NotImp, Vec::new());
    }
    let plain = message.queries().len() == 1
        && message.answers().is_empty()
        && message.name_servers().is_empty()
        && message.additionals().is_empty()
        && message.signature().is_empty();
    if !plain {
        return reply(&message, ResponseCode::FormErr, Vec::new());
    }
    if offline || message.queries()[0].query_class() != DNSClass::IN {
        return reply(&message, ResponseCode::Refused, Vec::new());
    }
    let question = message.queries()[0].clone();
    let name = question.name().to_ascii();
    let name = name.trim_end_matches('.');
    if matches!(question.query_type(), RecordType::A | RecordType::AAAA) {
        let addresses = hosts_lookup(resolver, name);
        if !addresses.is_empty() {
            let records = addresses
                .into_iter()
                .filter_map(|address| match (question.query_type(), address) {
                    (RecordType::A, IpAddr::V4(v4)) => Some(RData::A(A(v4))),
                    (RecordType::AAAA, IpAddr::V6(v6)) => Some(RData::AAAA(AAAA(v6))),
                    _ => None,
                })
                .map(|data| Record::from_rdata(question.name().clone(), HOSTS_TTL, data))
                .collect();
            return reply(&message, ResponseCode::NoError, records);
        }
    }
    let rewritten = upstream_query(&message).to_vec().ok()?;
    forward(&rewritten, resolver, transport).or_else(|| reply(&message, ResponseCode::ServFail, Vec::new()))
}

/// What goes upstream for the plain question `query`: its id, flags and question, and of
/// its EDNS only the payload size and the DNSSEC bit (no option the guest chose).
fn upstream_query(query: &Message) -> Message {
    let mut upstream = Message::new();
    upstream
        .set_id(query.id())
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(query.recursion_desired())
        .set_checking_disabled(query.checking_disabled())
        .add_queries(query.queries().to_vec());
    if let Some(edns) = query.extensions() {
        let mut fresh = Edns::new();
        fresh.set_max_payload(edns.max_payload().clamp(512, 4096)).set_dnssec_ok(edns.flags().dnssec_ok);
        upstream.set_edns(fresh);
    }
    upstream
}

/// A response to `query` with `code` and `answers`.
fn reply(query: &Message, code: ResponseCode, answers: Vec<Record>) -> Option<Vec<u8>> {
    let mut response = Message::new();
    response
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(code);
    response.add_queries(query.queries().to_vec());
    response.add_answers(answers);
    response.to_vec().ok()
}

/// The addresses the hosts file gives `name`.
fn hosts_lookup(resolver: &HostResolver, name: &str) -> Vec<IpAddr> {
    let text = std::fs::read_to_string(&resolver.hosts).unwrap_or_default();
    text.lines()
        .map(|line| line.split('#').next().unwrap_or_default())
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let address: IpAddr = words.next()?.parse().ok()?;
            words.any(|alias| alias.eq_ignore_ascii_case(name)).then_some(address)
        })
        .collect()
}

/// The host's nameservers, in `resolv.conf` order.
fn nameservers(resolver: &HostResolver) -> Vec<SocketAddr> {
    let text = std::fs::read_to_string(&resolver.resolv_conf).unwrap_or_default();
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|address| address.trim().parse::<IpAddr>().ok())
        .map(|address| SocketAddr::new(address, 53))
        .collect()
}

/// The first answer a host nameserver gives to `query`, as it sent it.
fn forward(query: &[u8], resolver: &HostResolver, transport: Transport) -> Option<Vec<u8>> {
    forward_via(query, &nameservers(resolver), transport)
}

/// The first answer one of `servers` gives to `query` over `transport` (with its id), as
/// it sent it.
fn forward_via(query: &[u8], servers: &[SocketAddr], transport: Transport) -> Option<Vec<u8>> {
    let id = query.get(..2)?;
    servers.iter().find_map(|&server| {
        let answer = match transport {
            Transport::Udp => ask_udp(server, query),
            Transport::Tcp => super::framing::ask(server, query, UPSTREAM_TIMEOUT).ok(),
        }?;
        (answer.get(..2) == Some(id)).then_some(answer)
    })
}

/// Asks `server` over UDP.
fn ask_udp(server: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    let local: SocketAddr = if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().ok()?;
    let socket = UdpSocket::bind(local).ok()?;
    socket.set_read_timeout(Some(UPSTREAM_TIMEOUT)).ok()?;
    socket.connect(server).ok()?;
    socket.send(query).ok()?;
    let mut buffer = vec![0u8; 65535];
    let length = socket.recv(&mut buffer).ok()?;
    buffer.truncate(length);
    Some(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn query(name: &str, kind: RecordType) -> Vec<u8> {
        let mut message = Message::new();
        message.set_id(4242).set_recursion_desired(true);
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        message.to_vec().unwrap()
    }

    fn resolver(dir: &std::path::Path, hosts: &str, resolv: &str) -> HostResolver {
        std::fs::write(dir.join("hosts"), hosts).unwrap();
        std::fs::write(dir.join("resolv.conf"), resolv).unwrap();
        HostResolver { resolv_conf: dir.join("resolv.conf"), hosts: dir.join("hosts") }
    }

    #[test]
    fn hosts_file_names_are_answered_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let resolver =
            resolver(dir.path(), "10.77.0.7 intranet.corp.test intranet # vpn\n::1 localhost\n", "");
        let reply = Message::from_vec(
            &answer(&query("intranet.corp.test.", RecordType::A), &resolver, false, Transport::Udp).unwrap(),
        )
        .unwrap();
        assert_eq!(reply.id(), 4242);
        assert_eq!(reply.response_code(), ResponseCode::NoError);
        assert_eq!(reply.answers().len(), 1);
        assert_eq!(reply.answers()[0].data(), &RData::A(A("10.77.0.7".parse().unwrap())));
        // No nameserver at all: a name the hosts file lacks fails, it is not invented.
        let missing = Message::from_vec(
            &answer(&query("other.test.", RecordType::A), &resolver, false, Transport::Udp).unwrap(),
        )
        .unwrap();
        assert_eq!(missing.response_code(), ResponseCode::ServFail);
    }

    /// Nothing but a plain question reaches the host's nameservers (which may trust the
    /// host's own address for updates): the guest's update, notify or odd message is
    /// answered here.
    #[test]
    fn only_plain_questions_go_upstream() {
        let dir = tempfile::tempdir().unwrap();
        let resolver = resolver(dir.path(), "", "nameserver 127.0.0.1\n");
        let code = |message: Message| {
            let bytes = message.to_vec().unwrap();
            let got = forward_never(&bytes, &resolver);
            Message::from_vec(&got).unwrap().response_code()
        };
        let mut update = Message::from_vec(&query("zone.test.", RecordType::SOA)).unwrap();
        update.set_op_code(OpCode::Update);
        assert_eq!(code(update), ResponseCode::NotImp);
        let mut notify = Message::from_vec(&query("zone.test.", RecordType::SOA)).unwrap();
        notify.set_op_code(OpCode::Notify);
        assert_eq!(code(notify), ResponseCode::NotImp);
        let mut two = Message::from_vec(&query("a.test.", RecordType::A)).unwrap();
        two.add_query(hickory_proto::op::Query::query(Name::from_ascii("b.test.").unwrap(), RecordType::A));
        assert_eq!(code(two), ResponseCode::FormErr);
        let mut with_answer = Message::from_vec(&query("a.test.", RecordType::A)).unwrap();
        with_answer.add_answer(Record::from_rdata(
            Name::from_ascii("a.test.").unwrap(),
            1,
            RData::A(A([1, 2, 3, 4].into())),
        ));
        assert_eq!(code(with_answer), ResponseCode::FormErr);
        let mut chaos = Message::from_vec(&query("version.bind.", RecordType::TXT)).unwrap();
        let mut question = chaos.queries()[0].clone();
        question.set_query_class(DNSClass::CH);
        chaos.take_queries();
        chaos.add_query(question);
        assert_eq!(code(chaos), ResponseCode::Refused);
    }

    /// What goes upstream is the question alone, written anew: an EDNS option the guest
    /// chose (a client subnet, a cookie) does not go with it.
    #[test]
    fn the_upstream_query_carries_no_option_of_the_guests() {
        use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
        let mut asked = Message::from_vec(&query("www.example.test.", RecordType::A)).unwrap();
        let mut edns = Edns::new();
        edns.set_max_payload(1232).set_dnssec_ok(true);
        edns.options_mut().insert(EdnsOption::Unknown(EdnsCode::Cookie.into(), vec![7; 8]));
        asked.set_edns(edns);
        let sent = Message::from_vec(&upstream_query(&asked).to_vec().unwrap()).unwrap();
        assert_eq!((sent.id(), sent.queries()), (asked.id(), asked.queries()));
        let edns = sent.extensions().as_ref().unwrap();
        assert_eq!((edns.max_payload(), edns.flags().dnssec_ok), (1232, true));
        assert!(edns.options().as_ref().is_empty(), "{:?}", edns.options());
    }

    /// The answer to `query` when no upstream could be asked (resolv.conf points at port
    /// 53 of the loopback, where nothing of this test listens).
    fn forward_never(query: &[u8], resolver: &HostResolver) -> Vec<u8> {
        answer(query, resolver, false, Transport::Udp).unwrap()
    }

    #[test]
    fn an_offline_vm_is_refused_and_garbage_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let resolver = resolver(dir.path(), "10.77.0.7 intranet.corp.test\n", "");
        let reply = Message::from_vec(
            &answer(&query("intranet.corp.test.", RecordType::A), &resolver, true, Transport::Udp).unwrap(),
        )
        .unwrap();
        assert_eq!(reply.response_code(), ResponseCode::Refused);
        assert!(reply.answers().is_empty());
        assert_eq!(answer(b"\x00\x01garbage", &resolver, false, Transport::Udp), None);
    }

    /// Over TCP, the query goes upstream over TCP, and an answer far over UDP's 512 bytes
    /// comes back whole.
    #[test]
    fn tcp_queries_go_upstream_over_tcp() {
        let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = SocketAddr::from(([127, 0, 0, 1], upstream.local_addr().unwrap().port()));
        let serving = std::thread::spawn(move || {
            let (mut connection, _) = upstream.accept().unwrap();
            let query = super::super::framing::read_message(&mut connection).unwrap().unwrap();
            let mut reply = Message::from_vec(&query).unwrap();
            reply.set_message_type(MessageType::Response);
            for i in 0..60u8 {
                let name = reply.queries()[0].name().clone();
                reply.add_answer(Record::from_rdata(name, 60, RData::A(A([10, 0, 0, i].into()))));
            }
            super::super::framing::write_message(&mut connection, &reply.to_vec().unwrap()).unwrap();
        });
        let got = forward_via(&query("big.example.test.", RecordType::A), &[server], Transport::Tcp).unwrap();
        serving.join().unwrap();
        assert!(got.len() > 512);
        assert_eq!(Message::from_vec(&got).unwrap().answers().len(), 60);
    }

    #[test]
    fn other_names_go_to_the_hosts_nameservers_and_come_back_as_sent() {
        let dir = tempfile::tempdir().unwrap();
        let upstream = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = upstream.local_addr().unwrap().port();
        let resolver = resolver(dir.path(), "", "# the host's\nnameserver 127.0.0.1\nnameserver ::1\n");
        let server = std::thread::spawn(move || {
            let mut buffer = [0u8; 512];
            let (length, client) = upstream.recv_from(&mut buffer).unwrap();
            let mut reply = Message::from_vec(&buffer[..length]).unwrap();
            reply.set_message_type(MessageType::Response);
            reply.add_answer(Record::from_rdata(
                reply.queries()[0].name().clone(),
                60,
                RData::A(A("192.0.2.9".parse().unwrap())),
            ));
            upstream.send_to(&reply.to_vec().unwrap(), client).unwrap();
        });
        let sent = query("www.example.test.", RecordType::A);
        // resolv.conf names port 53; this test's upstream listens elsewhere.
        let got = forward_via(&sent, &[SocketAddr::from(([127, 0, 0, 1], port))], Transport::Udp).unwrap();
        server.join().unwrap();
        let reply = Message::from_vec(&got).unwrap();
        assert_eq!(reply.id(), 4242);
        assert_eq!(reply.answers()[0].data(), &RData::A(A("192.0.2.9".parse().unwrap())));
        let loopback6: SocketAddr = "[::1]:53".parse().unwrap();
        assert_eq!(nameservers(&resolver), [SocketAddr::from(([127, 0, 0, 1], 53)), loopback6]);
    }
}
