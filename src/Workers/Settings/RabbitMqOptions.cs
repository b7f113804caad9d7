namespace SEmigrate.Workers.Settings;

/// <summary>The RabbitMQ broker that carries pages (RabbitMQ.Client) and events (MassTransit).</summary>
public sealed record RabbitMqOptions
{
    public const string Section = "RabbitMq";

    /// <summary>amqp://user:password@host:port/vhost</summary>
    public Uri? Uri { get; init; }
}
