using RabbitMQ.Client;
using RabbitMQ.Client.Exceptions;
using SEmigrate.Contracts.Migration;

namespace SEmigrate.Workers.Embedded;

/// <summary>Whether a host's worker is running: something consumes its step queue. The embedded engine
/// asks before it sends a step and while it waits for one, so a step for a host with no worker fails
/// in seconds, naming the host, rather than after the step's timeout.</summary>
public sealed class HostWorkers(IConnection connection)
{
    /// <summary>How long a worker may be away (restarting) before its host counts as having none: a worker's
    /// start took over 10 s on a loaded 2-core machine (CI), so a sub-host back after a kill was taken as gone.</summary>
    public static readonly TimeSpan Grace = TimeSpan.FromSeconds(30);

    public async Task<bool> IsRunningAsync(string host, CancellationToken ct)
    {
        // A passive declare of a queue that does not exist closes the channel: one channel per question.
        await using var channel = await connection.CreateChannelAsync(cancellationToken: ct);
        try
        {
            return await channel.ConsumerCountAsync(StepQueues.Host(host), ct) > 0;
        }
        catch (OperationInterruptedException e) when (e.ShutdownReason?.ReplyCode == 404)
        {
            return false;
        }
    }

    /// <summary>Waits up to <see cref="Grace"/> for the host's worker; false if none came.</summary>
    public async Task<bool> AwaitAsync(string host, CancellationToken ct)
    {
        var until = DateTime.UtcNow + Grace;
        while (!await IsRunningAsync(host, ct))
        {
            if (DateTime.UtcNow > until)
            {
                return false;
            }
            await Task.Delay(250, ct);
        }
        return true;
    }
}
