// What an Android app does to enroll, on the JVM: OkHttp for HTTP, BouncyCastle for the PKCS#10 and
// the PKCS#7, the key generated here (on a phone: in Android Keystore) and never written anywhere.
// Driven by tests/integration/test_enrollment_e2e.py line by line on stdin/stdout, because the test
// (not a phone) makes the attestation chain for the key under its test root:
//
//   javac -cp bcprov.jar:bcpkix.jar:bcutil.jar:okhttp.jar:okio.jar -d OUT MtlsClient.java EnrollmentClient.java
//   java -cp OUT:... EnrollmentClient BASE_URL_A BASE_URL_B TRUST_PEM USER PASSWORD
//
// out: PUBLIC <b64 SPKI>          key pair generated
// out: CHALLENGE <b64>            POST challenge through proxy A, no client certificate, Basic auth
// in:  CHAIN <b64 DER>,<b64 DER>  the attestation chain for PUBLIC with CHALLENGE (from the test)
// out: ENROLLED <device> <serial> POST simpleenroll: the PKCS#7's leaf, keyed with our key
// out: WHOAMI <status> <body>     GET /api/whoami through proxy A with the new certificate
// out: RENEWED <serial>           reenroll-challenge + simplereenroll over mTLS, same key
// out: OPEN A|B <status> <protocol> <body>  one kept-alive connection to each proxy with the renewed cert
// in:  WATCH                      then GET /healthz on both connections every 100 ms (a plain view: what
//                                 refuses is the proxy, not Django's enrolled_user resolver):
// out: REFUSED A|B <status> <body> at the first non-200 of each, then DONE (or TIMEOUT after 20 s),
//      then AFTER A|B <status> <body> for one more request to each;
//      <status> "TLS" when the open connection was closed (HTTP/2: GOAWAY) and the new handshake failed
//
// Host names resolve to 127.0.0.1; the server certificate is for localhost. Exit 0 unless an error.

import java.io.BufferedReader;
import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.io.InputStreamReader;
import java.math.BigInteger;
import java.net.InetAddress;
import java.nio.charset.StandardCharsets;
import java.security.GeneralSecurityException;
import java.security.KeyPair;
import java.security.KeyPairGenerator;
import java.security.KeyStore;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.security.cert.X509Certificate;
import java.security.spec.ECGenParameterSpec;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Collection;
import java.util.Collections;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.X509TrustManager;

import okhttp3.Credentials;
import okhttp3.MediaType;
import okhttp3.OkHttpClient;
import okhttp3.Request;
import okhttp3.RequestBody;
import okhttp3.Response;

import org.bouncycastle.asn1.x500.X500Name;
import org.bouncycastle.cert.X509CertificateHolder;
import org.bouncycastle.cert.jcajce.JcaX509CertificateConverter;
import org.bouncycastle.cms.CMSSignedData;
import org.bouncycastle.operator.jcajce.JcaContentSignerBuilder;
import org.bouncycastle.pkcs.PKCS10CertificationRequest;
import org.bouncycastle.pkcs.jcajce.JcaPKCS10CertificationRequestBuilder;

public final class EnrollmentClient {
    private EnrollmentClient() {}

    private static final MediaType JSON = MediaType.parse("application/json");
    private static final Pattern CHALLENGE = Pattern.compile("\"challenge\":\\s*\"([^\"]+)\"");
    private static final Base64.Encoder B64 = Base64.getEncoder();

    private static OkHttpClient client(X509TrustManager trust, KeyStore identity) throws GeneralSecurityException {
        KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
        if (identity != null) {
            kmf.init(identity, new char[0]);
        }
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(identity == null ? null : kmf.getKeyManagers(), new X509TrustManager[] {trust}, null);
        return new OkHttpClient.Builder()
                .sslSocketFactory(ctx.getSocketFactory(), trust)
                .dns(host -> Collections.singletonList(InetAddress.getByName("127.0.0.1")))
                .retryOnConnectionFailure(false)
                .connectTimeout(10, TimeUnit.SECONDS)
                .readTimeout(20, TimeUnit.SECONDS)
                .build();
    }

    private static String[] call(OkHttpClient client, Request request) throws IOException {
        try (Response response = client.newCall(request).execute()) {
            String body = response.body() != null ? response.body().string() : "";
            return new String[] {Integer.toString(response.code()), body, response.protocol().toString()};
        }
    }

    private static String challengeOf(String[] response) throws IOException {
        Matcher m = CHALLENGE.matcher(response[1]);
        if (!"201".equals(response[0]) || !m.find()) {
            throw new IOException("no challenge: " + response[0] + " " + response[1]);
        }
        return m.group(1);
    }

    /** The leaf of a certs-only PKCS#7 (base64 DER): the one certificate that is not a CA. */
    private static List<X509Certificate> certsOf(String[] response) throws Exception {
        if (!"201".equals(response[0])) {
            throw new IOException("no certificate: " + response[0] + " " + response[1]);
        }
        byte[] der = Base64.getMimeDecoder().decode(response[1]);
        CMSSignedData signed = new CMSSignedData(der);
        JcaX509CertificateConverter converter = new JcaX509CertificateConverter();
        List<X509Certificate> leaves = new ArrayList<>();
        List<X509Certificate> cas = new ArrayList<>();
        @SuppressWarnings("unchecked")
        Collection<X509CertificateHolder> holders = signed.getCertificates().getMatches(null);
        for (X509CertificateHolder holder : holders) {
            X509Certificate cert = converter.getCertificate(holder);
            (cert.getBasicConstraints() < 0 ? leaves : cas).add(cert);
        }
        if (leaves.size() != 1) {
            throw new IOException("expected one leaf in the PKCS#7, got " + leaves.size());
        }
        leaves.addAll(cas);
        return leaves;
    }

    private static KeyStore identity(KeyPair pair, List<X509Certificate> chain) throws Exception {
        KeyStore ks = KeyStore.getInstance("PKCS12");
        ks.load(null, null);
        ks.setKeyEntry("device", pair.getPrivate(), new char[0], chain.toArray(new Certificate[0]));
        return ks;
    }

    private static String csr(KeyPair pair) throws Exception {
        PKCS10CertificationRequest req = new JcaPKCS10CertificationRequestBuilder(
                new X500Name("CN=ignored by the server"), pair.getPublic())
                .build(new JcaContentSignerBuilder("SHA256withECDSA").build(pair.getPrivate()));
        return B64.encodeToString(req.getEncoded());
    }

    private static Request post(String url, String json) {
        return new Request.Builder().url(url).post(RequestBody.create(JSON, json)).build();
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 5) {
            System.err.println("usage: EnrollmentClient BASE_URL_A BASE_URL_B TRUST_PEM USER PASSWORD");
            System.exit(64);
        }
        String baseA = args[0];
        String baseB = args[1];
        String est = "/.well-known/est/";
        X509TrustManager trust = MtlsClient.trustManager(args[2]);
        String basic = Credentials.basic(args[3], args[4]);
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));

        KeyPairGenerator kpg = KeyPairGenerator.getInstance("EC");
        kpg.initialize(new ECGenParameterSpec("secp256r1"));
        KeyPair pair = kpg.generateKeyPair();
        System.out.println("PUBLIC " + B64.encodeToString(pair.getPublic().getEncoded()));

        OkHttpClient anonymous = client(trust, null);
        Request challengeRequest = new Request.Builder().url(baseA + est + "challenge").header("Authorization", basic)
                .post(RequestBody.create(null, new byte[0])).build();
        String challenge = challengeOf(call(anonymous, challengeRequest));
        System.out.println("CHALLENGE " + challenge);
        System.out.flush();

        String line = in.readLine();
        if (line == null || !line.startsWith("CHAIN ")) {
            throw new IOException("expected CHAIN, got " + line);
        }
        StringBuilder chain = new StringBuilder();
        for (String item : line.substring(6).trim().split(",")) {
            chain.append(chain.length() == 0 ? "" : ",").append('"').append(item).append('"');
        }
        String enrollJson = "{\"platform\": \"android\", \"challenge\": \"" + challenge + "\", \"csr\": \"" + csr(pair)
                + "\", \"attestation_chain\": [" + chain + "]}";
        Request enroll = new Request.Builder().url(baseA + est + "simpleenroll").header("Authorization", basic)
                .post(RequestBody.create(JSON, enrollJson)).build();
        List<X509Certificate> certs = certsOf(call(anonymous, enroll));
        X509Certificate leaf = certs.get(0);
        String device = leaf.getSubjectX500Principal().getName().replaceAll(".*CN=([0-9a-f-]+).*", "$1");
        System.out.println("ENROLLED " + device + " " + leaf.getSerialNumber().toString(16));

        OkHttpClient withCert = client(trust, identity(pair, certs));
        String[] who = call(withCert, new Request.Builder().url(baseA + "/api/whoami").build());
        System.out.println("WHOAMI " + who[0] + " " + who[1].replace('\n', ' '));

        String renewal = challengeOf(call(withCert, post(baseA + est + "reenroll-challenge", "")));
        String[] renewed = call(withCert, post(baseA + est + "simplereenroll",
                "{\"challenge\": \"" + renewal + "\", \"csr\": \"" + csr(pair) + "\"}"));
        List<X509Certificate> renewedCerts = certsOf(renewed);
        BigInteger serial = renewedCerts.get(0).getSerialNumber();
        System.out.println("RENEWED " + serial.toString(16));

        OkHttpClient renewedClient = client(trust, identity(pair, renewedCerts));
        String[] bases = {baseA, baseB};
        String[] names = {"A", "B"};
        for (int i = 0; i < 2; i++) {
            String[] r = call(renewedClient, new Request.Builder().url(bases[i] + "/api/whoami").build());
            System.out.println("OPEN " + names[i] + " " + r[0] + " " + r[2] + " " + r[1].replace('\n', ' '));
        }
        System.out.println("POOLED " + renewedClient.connectionPool().connectionCount());
        System.out.flush();
        line = in.readLine();
        if (!"WATCH".equals(line)) {
            throw new IOException("expected WATCH, got " + line);
        }
        boolean[] refused = {false, false};
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
        while (!(refused[0] && refused[1]) && System.nanoTime() < deadline) {
            for (int i = 0; i < 2; i++) {
                if (refused[i]) {
                    continue;
                }
                String[] r;
                try {
                    r = call(renewedClient, new Request.Builder().url(bases[i] + "/healthz").build());
                } catch (IOException e) {
                    // HTTP/2: the proxy closed the open connection (GOAWAY) and refused the new handshake;
                    // under TLS 1.3 OkHttp learns that only when it reads (a StreamResetException)
                    r = new String[] {"TLS", e.toString()};
                }
                if (!"200".equals(r[0])) {
                    refused[i] = true;
                    System.out.println("REFUSED " + names[i] + " " + r[0] + " " + r[1].replace('\n', ' '));
                    System.out.flush();
                }
            }
            Thread.sleep(100);
        }
        System.out.println(refused[0] && refused[1] ? "DONE" : "TIMEOUT");
        for (int i = 0; i < 2; i++) {  // and a request after that: a new connection, a new handshake
            String[] r;
            try {
                r = call(renewedClient, new Request.Builder().url(bases[i] + "/healthz").build());
            } catch (IOException e) {
                r = new String[] {"TLS", e.toString()};
            }
            System.out.println("AFTER " + names[i] + " " + r[0] + " " + r[1].replace('\n', ' '));
        }
        System.out.println("CONNECTIONS " + renewedClient.connectionPool().connectionCount());
        System.out.flush();
        System.exit(0);  // OkHttp's HTTP/2 reader threads are not daemons
    }
}
