// A minimal JSSE mutual-TLS client: what an Android app does with the PKCS#12 bundle that
// `mtls-proxy pki issue-client --p12` writes, minus the Android UI.
//
//   javac -d OUT MtlsClient.java
//   java -cp OUT MtlsClient URL P12_PATH P12_PASSWORD TRUST_PEM
//
// The client key and certificate come from KeyStore("PKCS12") through a KeyManagerFactory;
// the trust store holds ONLY the certificates in TRUST_PEM (the server CA, or the
// self-signed server certificate), never the JDK's default CAs, so the test proves the
// pinned-anchor setup a mobile app uses.
//
// Prints the HTTP status on the first line, then the body.
// Exit codes: 0 = HTTP 200, 2 = any other HTTP status, 3 = TLS/IO/keystore error, 64 = usage.

import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.security.GeneralSecurityException;
import java.security.KeyStore;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.util.Collection;

import javax.net.ssl.HttpsURLConnection;
import javax.net.ssl.KeyManager;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManager;
import javax.net.ssl.TrustManagerFactory;
import javax.net.ssl.X509TrustManager;

public final class MtlsClient {
    private MtlsClient() {}

    /** The client key and certificate from the PKCS#12 bundle. */
    static KeyManager[] keyManagers(String p12Path, char[] password) throws IOException, GeneralSecurityException {
        KeyStore identity = KeyStore.getInstance("PKCS12");
        try (InputStream in = new FileInputStream(p12Path)) {
            identity.load(in, password);
        }
        KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
        kmf.init(identity, password);
        return kmf.getKeyManagers();
    }

    /** A trust manager whose only anchors are the certificates in TRUST_PEM. */
    static X509TrustManager trustManager(String trustPem) throws IOException, GeneralSecurityException {
        KeyStore anchors = KeyStore.getInstance(KeyStore.getDefaultType());
        anchors.load(null, null);
        CertificateFactory cf = CertificateFactory.getInstance("X.509");
        Collection<? extends Certificate> certs;
        try (InputStream in = new FileInputStream(trustPem)) {
            certs = cf.generateCertificates(in);
        }
        if (certs.isEmpty()) {
            throw new GeneralSecurityException("no certificate in " + trustPem);
        }
        int i = 0;
        for (Certificate cert : certs) {
            anchors.setCertificateEntry("anchor-" + i++, cert);
        }
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(anchors);
        for (TrustManager tm : tmf.getTrustManagers()) {
            if (tm instanceof X509TrustManager) {
                return (X509TrustManager) tm;
            }
        }
        throw new GeneralSecurityException("no X509TrustManager");
    }

    static SSLContext buildContext(String p12Path, char[] password, X509TrustManager trust)
            throws IOException, GeneralSecurityException {
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(keyManagers(p12Path, password), new TrustManager[] {trust}, null);
        return ctx;
    }

    public static void main(String[] args) {
        if (args.length != 4) {
            System.err.println("usage: MtlsClient URL P12_PATH P12_PASSWORD TRUST_PEM");
            System.exit(64);
        }
        int exit;
        try {
            SSLContext ctx = buildContext(args[1], args[2].toCharArray(), trustManager(args[3]));
            HttpsURLConnection conn = (HttpsURLConnection) new URL(args[0]).openConnection();
            conn.setSSLSocketFactory(ctx.getSocketFactory());
            conn.setConnectTimeout(10_000);
            conn.setReadTimeout(10_000);
            int status = conn.getResponseCode();
            InputStream body = status >= 400 ? conn.getErrorStream() : conn.getInputStream();
            String text = "";
            if (body != null) {
                try (InputStream in = body) {
                    text = new String(in.readAllBytes(), StandardCharsets.UTF_8);
                }
            }
            System.out.println(status);
            System.out.println(text);
            exit = status == 200 ? 0 : 2;
        } catch (IOException | GeneralSecurityException e) {
            System.err.println("error: " + e);
            exit = 3;
        }
        System.exit(exit);
    }
}
