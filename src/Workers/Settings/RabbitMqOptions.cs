using RabbitMQ.Client;

namespace SEmigrate.Workers.Settings;

/// <summary>The RabbitMQ broker that carries pages (RabbitMQ.Client) and events (MassTransit).</summary>
public sealed record RabbitMqOptions
{
    public const string Section = "RabbitMq";

    /// <summary>amqp://user:password@host:port/vhost, or amqps:// for TLS.</summary>
    public Uri? Uri { get; init; }

    /// <summary>The one reading of <see cref="Uri"/>, RabbitMQ.Client's own (default port 5672, or 5671
    /// and TLS with the host as server name for amqps; user, password and vhost unescaped). MassTransit
    /// is configured from the same factory, so both ends of every process agree.</summary>
    public ConnectionFactory ConnectionFactory(string clientName) => new() { Uri = Uri!, ClientProvidedName = clientName };
}
