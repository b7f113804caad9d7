using System.Collections.Concurrent;
using System.Diagnostics;
using RabbitMQ.Client;
using RabbitMQ.Client.Events;

namespace SEmigrate.Workers.Bench;

/// <summary>The baselines: plain RabbitMQ.Client request/response and bulk publishing with confirms,
/// with the same message sizes as the page protocol, against an out-of-process echo server.</summary>
public static class RawRabbit
{
    /// <summary>The echo server (`semigrate bench echo-server`): replies with N bytes to a request with
    /// a reply address, only acknowledges one without.</summary>
    public static async Task ServeAsync(IConnection connection, string queue, int replyBytes, CancellationToken ct)
    {
        await using var channel = await connection.CreateChannelAsync(cancellationToken: ct);
        await channel.QueueDeclareAsync(queue, durable: false, exclusive: false, autoDelete: true, cancellationToken: ct);
        await channel.BasicQosAsync(0, 64, false, ct);
        var reply = new byte[replyBytes];
        var consumer = new AsyncEventingBasicConsumer(channel);
        consumer.ReceivedAsync += async (_, d) =>
        {
            if (!string.IsNullOrEmpty(d.BasicProperties.ReplyTo))
            {
                await channel.BasicPublishAsync("", d.BasicProperties.ReplyTo, false,
                    new BasicProperties { CorrelationId = d.BasicProperties.CorrelationId }, reply);
            }
            await channel.BasicAckAsync(d.DeliveryTag, false);
        };
        await channel.BasicConsumeAsync(queue, autoAck: false, consumer, ct);
        Console.WriteLine("echo server ready");
        try
        {
            await Task.Delay(Timeout.Infinite, ct);
        }
        catch (OperationCanceledException)
        {
        }
    }

    /// <summary>Round trips of a request of <paramref name="requestBytes"/>, <paramref name="inFlight"/>
    /// at a time; latencies in microseconds.</summary>
    public static async Task<List<double>> RoundTripsAsync(IConnection connection, string queue, int requestBytes, int inFlight, int count, CancellationToken ct)
    {
        await using var channel = await connection.CreateChannelAsync(cancellationToken: ct);
        var pending = new ConcurrentDictionary<string, TaskCompletionSource>();
        var consumer = new AsyncEventingBasicConsumer(channel);
        consumer.ReceivedAsync += (_, d) =>
        {
            if (d.BasicProperties.CorrelationId is { } id && pending.TryRemove(id, out var done))
            {
                done.TrySetResult();
            }
            return Task.CompletedTask;
        };
        await channel.BasicConsumeAsync("amq.rabbitmq.reply-to", autoAck: true, consumer, ct);
        var request = new byte[requestBytes];
        var latencies = new ConcurrentBag<double>();
        var next = 0;
        await Task.WhenAll(Enumerable.Range(0, inFlight).Select(async _ =>
        {
            while (Interlocked.Increment(ref next) <= count)
            {
                var id = Guid.NewGuid().ToString("N");
                var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                pending[id] = done;
                var start = Stopwatch.GetTimestamp();
                await channel.BasicPublishAsync("", queue, false, new BasicProperties { ReplyTo = "amq.rabbitmq.reply-to", CorrelationId = id }, request, ct);
                await done.Task.WaitAsync(TimeSpan.FromSeconds(30), ct);
                latencies.Add(Stopwatch.GetElapsedTime(start).TotalMicroseconds);
            }
        }));
        return [.. latencies];
    }

    /// <summary>Publishes <paramref name="messages"/> messages of <paramref name="size"/> bytes with
    /// publisher confirms, <paramref name="window"/> outstanding, and returns the seconds until the echo
    /// server has received the last of them: the point at which the page protocol counts a batch as
    /// stored. A confirm alone only says the broker queued it, so timing confirms would let raw run
    /// ahead of its consumer. The last message asks for a reply; one consumer takes a queue in order,
    /// so that reply means every message before it was delivered.</summary>
    public static async Task<double> BulkAsync(IConnection connection, string queue, int size, int messages, int window, CancellationToken ct)
    {
        await using var channel = await connection.CreateChannelAsync(new CreateChannelOptions(
            publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true, outstandingPublisherConfirmationsRateLimiter: null), ct);
        var delivered = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var consumer = new AsyncEventingBasicConsumer(channel);
        consumer.ReceivedAsync += (_, _) =>
        {
            delivered.TrySetResult();
            return Task.CompletedTask;
        };
        await channel.BasicConsumeAsync("amq.rabbitmq.reply-to", autoAck: true, consumer, ct);
        var body = new byte[size];
        Random.Shared.NextBytes(body);
        var clock = Stopwatch.StartNew();
        var next = 0;
        await Task.WhenAll(Enumerable.Range(0, window).Select(async _ =>
        {
            while (Interlocked.Increment(ref next) < messages)
            {
                await channel.BasicPublishAsync("", queue, false, new BasicProperties(), body, ct);
            }
        }));
        await channel.BasicPublishAsync("", queue, false, new BasicProperties { ReplyTo = "amq.rabbitmq.reply-to" }, body, ct);
        await delivered.Task.WaitAsync(TimeSpan.FromMinutes(5), ct);
        return clock.Elapsed.TotalSeconds;
    }

    /// <summary>Waits until the echo server has consumed everything, so one measurement does not run
    /// into the next.</summary>
    public static async Task DrainAsync(IConnection connection, string queue, CancellationToken ct)
    {
        await using var channel = await connection.CreateChannelAsync(cancellationToken: ct);
        for (var i = 0; i < 600 && (await channel.QueueDeclarePassiveAsync(queue, ct)).MessageCount > 0; i++)
        {
            await Task.Delay(50, ct);
        }
    }
}
