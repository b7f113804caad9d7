using System.Collections.Concurrent;
using RabbitMQ.Client;
using Xunit;

namespace SEmigrate.TestSupport;

/// <summary>The local RabbitMQ. Tests take queue and exchange names from <see cref="Name"/>, unique to
/// the fixture, and every queue named so is deleted afterwards.</summary>
public sealed class RabbitMqFixture : IAsyncLifetime
{
    private readonly string prefix = $"t-{Guid.NewGuid():N}"[..14];
    private readonly ConcurrentBag<string> names = [];

    public Uri Uri { get; private set; } = null!;

    public IConnection Connection { get; private set; } = null!;

    public async ValueTask InitializeAsync()
    {
        Uri = new Uri(await ServicesScript.SettingAsync("SEMIGRATE__RabbitMq__Uri"));
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
