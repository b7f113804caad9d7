using SEmigrate.Workers.Settings;

namespace SEmigrate.Workers.Tests;

/// <summary>One reading of the broker URI for the page path and for MassTransit: RabbitMQ.Client's. The
/// hand-made reading it replaces gave MassTransit port 65535 for a URI without a port
/// ((ushort)Uri.Port of -1) and took amqps without turning TLS on.</summary>
public class RabbitMqOptionsTests
{
    [Theory]
    [InlineData("amqp://guest:guest@127.0.0.1/", "127.0.0.1", 5672, false, "/", "guest", "guest")]
    [InlineData("amqp://guest:guest@127.0.0.1:16672/", "127.0.0.1", 16672, false, "/", "guest", "guest")]
    [InlineData("amqps://worker:p%40ss@broker.example/", "broker.example", 5671, true, "/", "worker", "p@ss")]
    [InlineData("amqps://worker:pw@broker.example:15671/fleet%2Fa", "broker.example", 15671, true, "fleet/a", "worker", "pw")]
    public void The_uri_gives_host_port_tls_vhost_and_credentials(string uri, string host, int port, bool tls, string vhost, string user, string password)
    {
        var f = new RabbitMqOptions { Uri = new Uri(uri) }.ConnectionFactory("test");

        Assert.Equal((host, port, tls, vhost, user, password), (f.HostName, f.Endpoint.Port, f.Ssl.Enabled, f.VirtualHost, f.UserName, f.Password));
        if (tls)
        {
            Assert.Equal(host, f.Ssl.ServerName);
        }
    }
}
