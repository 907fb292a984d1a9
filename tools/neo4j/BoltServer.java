// The Bolt test server of tenant-migrator: Neo4j 4.4 Community embedded, with
// authentication on, its Bolt connector on a loopback port and its data in a folder
// (so a restart keeps the graph). It stands in for Memgraph in tests: a real Cypher
// engine speaking Bolt 4.x, which neo4rs 0.8 speaks. Its database is named `memgraph`
// like Memgraph's default one, which clients must name in every request (Memgraph 2.11
// and later refuse an unknown name; Neo4j does too).
//
// Usage: java -cp CLASSPATH BoltServer PORT DATA_DIR PASSWORD [TLS_DIR]   (PASSWORD "-": no
// authentication, like a default Memgraph, for the reference script, which connects without
// credentials; TLS_DIR: a folder with private.key and public.crt, and Bolt then requires TLS)
// Prints "READY PORT" once it accepts connections; shuts down when stdin closes
// (the test process died) or on SIGTERM.

import java.io.InputStream;
import java.nio.file.Path;
import java.util.Map;

import org.neo4j.configuration.GraphDatabaseSettings;
import org.neo4j.configuration.connectors.BoltConnector;
import org.neo4j.configuration.helpers.SocketAddress;
import org.neo4j.configuration.ssl.ClientAuth;
import org.neo4j.configuration.ssl.SslPolicyConfig;
import org.neo4j.configuration.ssl.SslPolicyScope;
import org.neo4j.dbms.api.DatabaseManagementService;
import org.neo4j.dbms.api.DatabaseManagementServiceBuilder;

public final class BoltServer {
    public static void main(String[] args) throws Exception {
        if (args.length != 3 && args.length != 4) {
            System.err.println("usage: BoltServer PORT DATA_DIR PASSWORD [TLS_DIR]");
            System.exit(2);
        }
        int port = Integer.parseInt(args[0]);
        Path dir = Path.of(args[1]);
        String password = args[2];
        boolean auth = !password.equals("-");
        boolean tls = args.length == 4;
        DatabaseManagementServiceBuilder builder = new DatabaseManagementServiceBuilder(dir)
                .setConfig(BoltConnector.enabled, true)
                .setConfig(BoltConnector.listen_address, new SocketAddress("127.0.0.1", port))
                .setConfig(BoltConnector.encryption_level,
                        tls ? BoltConnector.EncryptionLevel.REQUIRED : BoltConnector.EncryptionLevel.DISABLED)
                .setConfig(GraphDatabaseSettings.auth_enabled, auth)
                .setConfig(GraphDatabaseSettings.default_database, "memgraph")
                // Neo4j preallocates each transaction log file (250 MiB per database): a test
                // server lives in a temporary folder and needs a few MiB, not half a GiB.
                .setConfig(GraphDatabaseSettings.preallocate_logical_logs, false);
        if (tls) {
            SslPolicyConfig bolt = SslPolicyConfig.forScope(SslPolicyScope.BOLT);
            builder.setConfig(bolt.enabled, true)
                    .setConfig(bolt.base_directory, Path.of(args[3]))
                    .setConfig(bolt.client_auth, ClientAuth.NONE);
        }
        DatabaseManagementService dbms = builder.build();
        Runtime.getRuntime().addShutdownHook(new Thread(dbms::shutdown));
        try {
            if (auth) dbms.database("system").executeTransactionally(
                    "ALTER USER neo4j SET PASSWORD $p CHANGE NOT REQUIRED", Map.of("p", password));
        } catch (RuntimeException e) {
            // A restarted server already has this password.
            if (!String.valueOf(e.getMessage()).contains("cannot be the same")) {
                throw e;
            }
        }
        System.out.println("READY " + port);
        System.out.flush();
        InputStream in = System.in;
        while (in.read() >= 0) {
            // Block until the parent closes our stdin.
        }
        System.exit(0);
    }
}
