/*
 * Iceberg's REST catalog server (the servlet behind the apache/iceberg-rest-fixture image, from
 * org.apache.iceberg:iceberg-open-api on Maven Central), bound to one address instead of all of
 * them: Iceberg's own RESTCatalogServer main binds 0.0.0.0, which scripts/cluster.sh must not do.
 *
 * Configured like the fixture: every CATALOG_* environment variable becomes a catalog property
 * (CATALOG_IO__IMPL -> io-impl, CATALOG_S3_ENDPOINT -> s3.endpoint), CATALOG_URI is the JDBC
 * store; REST_HOST and REST_PORT choose the address (default 127.0.0.1:8181).
 *
 *   java -cp iceberg-open-api-1.10.1.jar jvm/RestCatalogServer.java
 */
import java.util.HashMap;
import java.util.Locale;
import java.util.Map;
import org.apache.hadoop.conf.Configuration;
import org.apache.iceberg.CatalogUtil;
import org.apache.iceberg.catalog.Catalog;
import org.apache.iceberg.rest.RESTCatalogAdapter;
import org.apache.iceberg.rest.RESTCatalogServlet;
import org.eclipse.jetty.server.Server;
import org.eclipse.jetty.server.ServerConnector;
import org.eclipse.jetty.server.handler.gzip.GzipHandler;
import org.eclipse.jetty.servlet.ServletContextHandler;
import org.eclipse.jetty.servlet.ServletHolder;

public class RestCatalogServer {
  /** CATALOG_FOO__BAR_BAZ=v -> foo-bar.baz=v, as Iceberg's RCKUtils.environmentCatalogConfig. */
  static Map<String, String> environmentCatalogConfig() {
    Map<String, String> props = new HashMap<>();
    System.getenv().forEach((key, value) -> {
      if (key.startsWith("CATALOG_")) {
        String name = key.substring("CATALOG_".length()).replace("__", "-").replace("_", ".");
        props.put(name.toLowerCase(Locale.ROOT), value);
      }
    });
    return props;
  }

  public static void main(String[] args) throws Exception {
    Map<String, String> props = environmentCatalogConfig();
    props.putIfAbsent("catalog-impl", "org.apache.iceberg.jdbc.JdbcCatalog");
    props.putIfAbsent("jdbc.schema-version", "V1");
    if (!props.containsKey("uri") || !props.containsKey("warehouse")) {
      System.err.println("CATALOG_URI (the JDBC store) and CATALOG_WAREHOUSE are required");
      System.exit(2);
    }
    Catalog catalog = CatalogUtil.buildIcebergCatalog("rest_backend", props, new Configuration());

    ServletContextHandler context = new ServletContextHandler(ServletContextHandler.NO_SESSIONS);
    context.addServlet(new ServletHolder(new RESTCatalogServlet(new RESTCatalogAdapter(catalog))), "/*");
    context.insertHandler(new GzipHandler());

    Server server = new Server();
    ServerConnector connector = new ServerConnector(server);
    connector.setHost(System.getenv().getOrDefault("REST_HOST", "127.0.0.1"));
    connector.setPort(Integer.parseInt(System.getenv().getOrDefault("REST_PORT", "8181")));
    server.addConnector(connector);
    server.setHandler(context);
    server.start();
    System.out.println("Iceberg REST catalog on http://" + connector.getHost() + ":" + connector.getPort());
    server.join();
  }
}
