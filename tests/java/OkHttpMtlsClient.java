// Android's real HTTP client, OkHttp, on the JVM: mutual TLS with the PKCS#12 bundle that
// `mtls-proxy pki issue-client --p12` writes (or a keytool keystore), the server CA as the only
// trust anchor, and the pins that `mtls-proxy pki pins --format okhttp` generates in a
// CertificatePinner, read from that generated Kotlin snippet as it is.
//
//   javac -cp okhttp.jar:okio.jar -d OUT MtlsClient.java OkHttpMtlsClient.java
//   java -cp OUT:okhttp.jar:okio.jar OkHttpMtlsClient URL P12_PATH P12_PASSWORD TRUST_PEM PINS_FILE
//
// The URL's host is resolved to 127.0.0.1 (the test proxy listens there) so the URL can name the
// host the certificate and the pins are for, as an app's URL does.
//
// Prints the HTTP status on the first line, then the body.
// Exit codes: 0 = HTTP 200, 2 = any other HTTP status, 3 = TLS/IO/keystore error,
// 4 = certificate pinning failure, 64 = usage or no pin in PINS_FILE.

import java.io.IOException;
import java.net.InetAddress;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.security.GeneralSecurityException;
import java.util.Collections;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLPeerUnverifiedException;
import javax.net.ssl.X509TrustManager;

import okhttp3.CertificatePinner;
import okhttp3.OkHttpClient;
import okhttp3.Request;
import okhttp3.Response;
import okhttp3.ResponseBody;

public final class OkHttpMtlsClient {
    private OkHttpMtlsClient() {}

    private static final Pattern ADD = Pattern.compile("\\.add\\(\"([^\"]+)\", \"(sha256/[A-Za-z0-9+/=]+)\"\\)");

    /** The pins of a `pki pins --format okhttp` snippet: every `.add("host", "sha256/...")` line. */
    static CertificatePinner pinner(String snippetPath) throws IOException {
        String snippet = new String(Files.readAllBytes(Paths.get(snippetPath)), StandardCharsets.UTF_8);
        CertificatePinner.Builder builder = new CertificatePinner.Builder();
        Matcher m = ADD.matcher(snippet);
        int n = 0;
        while (m.find()) {
            builder.add(m.group(1), m.group(2));
            n++;
        }
        if (n == 0) {
            System.err.println("no .add(\"host\", \"sha256/...\") line in " + snippetPath);
            System.exit(64);
        }
        return builder.build();
    }

    public static void main(String[] args) {
        if (args.length != 5) {
            System.err.println("usage: OkHttpMtlsClient URL P12_PATH P12_PASSWORD TRUST_PEM PINS_FILE");
            System.exit(64);
        }
        int exit;
        try {
            X509TrustManager trust = MtlsClient.trustManager(args[3]);
            SSLContext ctx = MtlsClient.buildContext(args[1], args[2].toCharArray(), trust);
            OkHttpClient client = new OkHttpClient.Builder()
                    .sslSocketFactory(ctx.getSocketFactory(), trust)
                    .certificatePinner(pinner(args[4]))
                    .dns(host -> Collections.singletonList(InetAddress.getByName("127.0.0.1")))
                    .retryOnConnectionFailure(false)
                    .connectTimeout(10, TimeUnit.SECONDS)
                    .readTimeout(10, TimeUnit.SECONDS)
                    .build();
            Request request = new Request.Builder().url(args[0]).build();
            try (Response response = client.newCall(request).execute()) {
                ResponseBody body = response.body();
                System.out.println(response.code());
                System.out.println(body != null ? body.string() : "");
                exit = response.code() == 200 ? 0 : 2;
            }
        } catch (SSLPeerUnverifiedException e) {
            System.err.println("pinning: " + e.getMessage());
            exit = e.getMessage() != null && e.getMessage().startsWith("Certificate pinning failure") ? 4 : 3;
        } catch (IOException | GeneralSecurityException e) {
            System.err.println("error: " + e);
            exit = 3;
        }
        System.exit(exit);
    }
}
