//! Cost of accepting one typical text callback, without the network: parse the envelope, verify the
//! signature, decrypt, and parse the message.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use wecom_gateway::crypto::MsgCrypt;
use wecom_gateway::message::{Envelope, InboundMessage};

fn bench(c: &mut Criterion) {
    let crypt = MsgCrypt::new(
        "QDG6eK",
        "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C",
        "wx5823bf96d3bd56c7",
    )
    .unwrap();
    let xml = "<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName><FromUserName><![CDATA[zhangsan]]></FromUserName><CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[帮我看看明天上午的会议安排，顺便把周报发给我]]></Content><MsgId>7300000000000000001</MsgId><AgentID>218</AgentID></xml>";
    let e = crypt.encrypt_msg(xml, "1700000000", "1372623149", [7; 16]);
    let body = e.to_callback_xml("wx5823bf96d3bd56c7", "218");

    let mut group = c.benchmark_group("callback");
    group.throughput(Throughput::Elements(1));
    group.bench_function("verify+decrypt+parse text", |b| {
        b.iter(|| {
            let env = Envelope::parse(black_box(&body)).unwrap();
            crypt
                .verify(&e.msg_signature, &e.timestamp, &e.nonce, &env.encrypt)
                .unwrap();
            let plain = crypt.decrypt(&env.encrypt).unwrap();
            let msg = InboundMessage::parse(std::str::from_utf8(&plain).unwrap()).unwrap();
            black_box(msg)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
