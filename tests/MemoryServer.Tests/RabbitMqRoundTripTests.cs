using RabbitMQ.Client;
using RabbitMQ.Client.Events;
using SEmigrate.TestSupport;

namespace SEmigrate.MemoryServer.Tests;

public class RabbitMqRoundTripTests(RabbitMqFixture rabbit) : IClassFixture<RabbitMqFixture>
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static byte[] Page(int seed)
    {
        var page = new byte[4096];
        new Random(seed).NextBytes(page);
        return page;
    }

    [Fact]
    public async Task A_confirmed_publish_is_consumed_bit_exact_and_acked()
    {
        var queue = rabbit.Name("roundtrip");
        await using var channel = await rabbit.Connection.CreateChannelAsync(
            new CreateChannelOptions(publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true), Ct);
        await channel.QueueDeclareAsync(queue, durable: false, exclusive: false, autoDelete: false, cancellationToken: Ct);

        var sent = Enumerable.Range(0, 8).Select(Page).ToList();
        foreach (var body in sent)
        {
            // Confirm tracking: returns once the broker has the message, throws if it nacks.
            await channel.BasicPublishAsync("", queue, mandatory: true, body, Ct);
        }

        var received = new List<byte[]>();
        var all = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var consumer = new AsyncEventingBasicConsumer(channel);
        consumer.ReceivedAsync += async (_, delivery) =>
        {
            received.Add(delivery.Body.ToArray());
            await channel.BasicAckAsync(delivery.DeliveryTag, multiple: false);
            if (received.Count == sent.Count)
            {
                all.TrySetResult();
            }
        };
        await channel.BasicConsumeAsync(queue, autoAck: false, consumer, Ct);
        await all.Task.WaitAsync(TimeSpan.FromSeconds(30), Ct);

        Assert.Equal(sent, received);
        var state = await channel.QueueDeclarePassiveAsync(queue, Ct);
        Assert.Equal(0u, state.MessageCount);
    }

    [Fact]
    public async Task An_unacked_message_is_redelivered_after_the_consumer_dies()
    {
        var queue = rabbit.Name("redeliver");
        var body = Page(42);
        await using (var channel = await rabbit.Connection.CreateChannelAsync(cancellationToken: Ct))
        {
            await channel.QueueDeclareAsync(queue, durable: false, exclusive: false, autoDelete: false, cancellationToken: Ct);
            await channel.BasicPublishAsync("", queue, body, Ct);
            var first = await channel.BasicGetAsync(queue, autoAck: false, Ct);
            Assert.NotNull(first);
            Assert.False(first.Redelivered);
            // The channel closes without an ack: the broker must keep the message.
        }
        await using var again = await rabbit.Connection.CreateChannelAsync(cancellationToken: Ct);
        var second = await again.BasicGetAsync(queue, autoAck: true, Ct);
        Assert.NotNull(second);
        Assert.True(second.Redelivered);
        Assert.Equal(body, second.Body.ToArray());
    }
}
