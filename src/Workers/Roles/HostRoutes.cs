using Marten;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using RabbitMQ.Client;
using SEmigrate.Contracts.Audit;
using SEmigrate.Contracts.Migration;
using SEmigrate.Workers.Trust;

namespace SEmigrate.Workers.Roles;

/// <summary>An orchestrator binds every enrolled host's own exchanges to where it listens: the host's
/// audit exits to the audit queues, its progress exit to this process's progress endpoint, and
/// CancelSteps' exchange to the host's cancel entry. So a host's broker user declares, sends to and
/// reads names of its own only, and no host can unbind or delete another's routes. Each host once per
/// process (the bindings of durable exchanges last), on start, every few seconds, and when asked
/// (right after an enrolment). What a host sends before it is bound goes nowhere: its reports repeat.</summary>
public sealed class HostRoutes(IConnection connection, IDocumentStore store, AuditRoute audit, string progressEndpoint, ILogger<HostRoutes> logger) : BackgroundService
{
    private static readonly TimeSpan Every = TimeSpan.FromSeconds(5);
    private readonly HashSet<string> bound = new(StringComparer.Ordinal);
    private readonly SemaphoreSlim gate = new(1, 1);

    public override async Task StartAsync(CancellationToken cancellationToken)
    {
        await BindAsync(cancellationToken); // before the engine runs anything
        await base.StartAsync(cancellationToken);
    }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(Every);
        while (await timer.WaitForNextTickAsync(stoppingToken))
        {
            try
            {
                await BindAsync(stoppingToken);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                logger.LogWarning(e, "binding the hosts' routes failed; trying again in {Seconds} s", Every.TotalSeconds);
            }
        }
    }

    /// <summary>Binds the routes of every enrolled host not bound yet by this process.</summary>
    public async Task BindAsync(CancellationToken ct)
    {
        await gate.WaitAsync(ct);
        try
        {
            await using var query = store.QuerySession();
            var hosts = (await query.Query<HostEnrolment>().Select(e => e.Id).ToListAsync(ct)).Where(h => !bound.Contains(h)).ToList();
            foreach (var host in hosts)
            {
                try
                {
                    await BindHostAsync(host, ct);
                    bound.Add(host);
                }
                catch (RabbitMQ.Client.Exceptions.OperationInterruptedException e)
                {
                    // One host's exchange declared otherwise (by hand, or an older version) stops only its routes.
                    logger.LogWarning("cannot route host {Host}'s events, progress and cancels (trying again in {Seconds} s): {Reason}", host, Every.TotalSeconds, e.Message);
                }
            }
        }
        finally
        {
            gate.Release();
        }
    }

    private async Task BindHostAsync(string host, CancellationToken ct)
    {
        await using var channel = await connection.CreateChannelAsync(cancellationToken: ct);
        // Declared as MassTransit declares them (fanout; durable unless the endpoint's exchange is not), so
        // whoever comes first, the other's declaration is the same.
        async Task RouteAsync(string from, string to, bool toDurable = true)
        {
            await channel.ExchangeDeclareAsync(from, ExchangeType.Fanout, durable: true, autoDelete: false, cancellationToken: ct);
            await channel.ExchangeDeclareAsync(to, ExchangeType.Fanout, durable: toDurable, autoDelete: !toDurable, cancellationToken: ct);
            await channel.ExchangeBindAsync(to, from, "", cancellationToken: ct);
        }
        foreach (var queue in audit.Queues)
        {
            await RouteAsync(StepQueues.AuditExit(host, queue), queue);
        }
        await RouteAsync(StepQueues.ProgressExit(host), progressEndpoint, toDurable: false);
        await RouteAsync($"{typeof(CancelSteps).Namespace}:{nameof(CancelSteps)}", StepQueues.CancelEntry(host));
    }

    public override void Dispose()
    {
        gate.Dispose();
        base.Dispose();
    }
}
