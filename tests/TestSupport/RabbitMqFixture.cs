using System.Collections.Concurrent;
using RabbitMQ.Client;
using Xunit;

namespace SEmigrate.TestSupport;

/// <summary>The local RabbitMQ. Tests take queue and exchange names from <see cref="Name"/>, unique to
/// the fixture, and every queue named so is deleted afterwards.</summary>
public class RabbitMqFixture : IAsyncLifetime
{
    /// <summary>The virtual host, when not the tests' own.</summary>
    protected virtual string? VirtualHost => null;

    private readonly string prefix = $"t-{Guid.NewGuid():N}"[..14];
    private readonly ConcurrentBag<string> names = [];

    public Uri Uri { get; private set; } = null!;

    public IConnection Connection { get; private set; } = null!;

    public async ValueTask InitializeAsync()
    {
        Uri = new Uri(await ServicesScript.SettingAsync("SEMIGRATE__RabbitMq__Uri"));
        if (VirtualHost is { } vhost)
        {
            Uri = new UriBuilder(Uri) { Path = "/" + vhost }.Uri;
        }
        Connection = await new ConnectionFactory { Uri = Uri, ClientProvidedName = prefix }.CreateConnectionAsync();
    }

    public string Name(string what)
    {
        var name = $"{prefix}.{what}";
        names.Add(name);
        return name;
    }

    public async ValueTask DisposeAsync()
    {
        if (Connection is null)
        {
            return;
        }
        await using (var channel = await Connection.CreateChannelAsync())
        {
            foreach (var name in names)
            {
                await channel.QueueDeleteAsync(name);
            }
        }
        await Connection.DisposeAsync();
    }
}

/// <summary>The broker's traced virtual host (deploy/services.sh): every publish there is copied to
/// <see cref="TraceExchange"/>, as a broker-wide observer would see it. Only the leak tests use it.</summary>
public sealed class TracedRabbitMqFixture : RabbitMqFixture
{
    public const string TraceExchange = "amq.rabbitmq.trace";

    protected override string? VirtualHost => "semigrate-traced";
}
