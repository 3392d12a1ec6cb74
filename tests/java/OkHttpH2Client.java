// OkHttp (what Android apps use) against the proxy over HTTP/2: N concurrent GETs that OkHttp
// multiplexes on one connection, then one POST. Mutual TLS from a PKCS#12 bundle, trust only
// the given PEM anchors (never the JDK's CAs), ALPN offering h2 first, as OkHttp does.
//
//   javac -cp okhttp.jar:okio.jar -d OUT OkHttpH2Client.java
//   java -cp OUT:okhttp.jar:okio.jar OkHttpH2Client BASE_URL P12_PATH P12_PASSWORD TRUST_PEM N
//
// Prints one line per GET: "<i> <protocol> <status> <body>", then "post <protocol> <status> <body>",
// then "connections <count>" (connections OkHttp opened to the proxy).
// Exit codes: 0 = every response 200 over h2, 2 = anything else, 3 = TLS/IO/keystore error, 64 = usage.

import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.security.GeneralSecurityException;
import java.security.KeyStore;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.util.Arrays;
import java.util.Collection;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManager;
import javax.net.ssl.TrustManagerFactory;
import javax.net.ssl.X509TrustManager;

import okhttp3.Call;
import okhttp3.Callback;
import okhttp3.ConnectionPool;
import okhttp3.Dispatcher;
import okhttp3.MediaType;
import okhttp3.OkHttpClient;
import okhttp3.Protocol;
import okhttp3.Request;
import okhttp3.RequestBody;
import okhttp3.Response;

public final class OkHttpH2Client {
    private OkHttpH2Client() {}

    public static void main(String[] args) throws Exception {
        if (args.length != 5) {
            System.err.println("usage: OkHttpH2Client BASE_URL P12_PATH P12_PASSWORD TRUST_PEM N");
            System.exit(64);
        }
        String base = args[0];
        int n = Integer.parseInt(args[4]);
        OkHttpClient client;
        try {
            client = build(args[1], args[2].toCharArray(), args[3], n);
        } catch (IOException | GeneralSecurityException e) {
            System.err.println("error: " + e);
            System.exit(3);
            return;
        }
        // One request first: the connection exists (h2 negotiated) before the burst, so OkHttp
        // multiplexes the burst on it instead of racing several connections.
        AtomicInteger bad = new AtomicInteger();
        try (Response r = client.newCall(new Request.Builder().url(base + "/api/echo?warm=1").build()).execute()) {
            report("warm", r, bad);
        }
        CountDownLatch done = new CountDownLatch(n);
        String[] lines = new String[n];
        for (int i = 0; i < n; i++) {
            final int k = i;
            client.newCall(new Request.Builder().url(base + "/api/echo?i=" + k).build()).enqueue(new Callback() {
                @Override public void onFailure(Call call, IOException e) {
                    lines[k] = k + " error " + e;
                    bad.incrementAndGet();
                    done.countDown();
                }

                @Override public void onResponse(Call call, Response response) throws IOException {
                    try (Response r = response) {
                        String body = r.body().string();
                        lines[k] = k + " " + r.protocol() + " " + r.code() + " " + body;
                        if (r.code() != 200 || r.protocol() != Protocol.HTTP_2) {
                            bad.incrementAndGet();
                        }
                    }
                    done.countDown();
                }
            });
        }
        if (!done.await(60, TimeUnit.SECONDS)) {
            System.err.println("timed out");
            System.exit(3);
        }
        for (String line : lines) {
            System.out.println(line);
        }
        RequestBody body = RequestBody.create(MediaType.get("application/octet-stream"), new byte[100_000]);
        try (Response r = client.newCall(new Request.Builder().url(base + "/api/upload").post(body).build())
                .execute()) {
            report("post", r, bad);
        }
        System.out.println("connections " + client.connectionPool().connectionCount());
        client.dispatcher().executorService().shutdown();
        client.connectionPool().evictAll();
        System.exit(bad.get() == 0 ? 0 : 2);
    }

    private static void report(String what, Response r, AtomicInteger bad) throws IOException {
        System.out.println(what + " " + r.protocol() + " " + r.code() + " " + r.body().string());
        if (r.code() != 200 || r.protocol() != Protocol.HTTP_2) {
            bad.incrementAndGet();
        }
    }

    private static OkHttpClient build(String p12Path, char[] password, String trustPem, int n)
            throws IOException, GeneralSecurityException {
        KeyStore identity = KeyStore.getInstance("PKCS12");
        try (InputStream in = new FileInputStream(p12Path)) {
            identity.load(in, password);
        }
        KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
        kmf.init(identity, password);
        KeyStore anchors = KeyStore.getInstance(KeyStore.getDefaultType());
        anchors.load(null, null);
        Collection<? extends Certificate> certs;
        try (InputStream in = new FileInputStream(trustPem)) {
            certs = CertificateFactory.getInstance("X.509").generateCertificates(in);
        }
        int i = 0;
        for (Certificate cert : certs) {
            anchors.setCertificateEntry("anchor-" + i++, cert);
        }
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(anchors);
        TrustManager[] tms = tmf.getTrustManagers();
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(kmf.getKeyManagers(), tms, null);
        Dispatcher dispatcher = new Dispatcher();
        dispatcher.setMaxRequests(n);
        dispatcher.setMaxRequestsPerHost(n);
        return new OkHttpClient.Builder()
                .sslSocketFactory(ctx.getSocketFactory(), (X509TrustManager) tms[0])
                .protocols(Arrays.asList(Protocol.HTTP_2, Protocol.HTTP_1_1))
                .dispatcher(dispatcher)
                .connectionPool(new ConnectionPool(5, 1, TimeUnit.MINUTES))
                .connectTimeout(10, TimeUnit.SECONDS)
                .readTimeout(30, TimeUnit.SECONDS)
                .build();
    }
}
