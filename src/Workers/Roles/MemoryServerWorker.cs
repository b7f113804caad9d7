using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using RabbitMQ.Client;
using SEmigrate.MemoryServer;
using SEmigrate.MemoryServer.Store;
using SEmigrate.Workers.Settings;

namespace SEmigrate.Workers.Roles;

/// <summary>The sub-host role: runs this host's memory server until the host stops.</summary>
public sealed class MemoryServerWorker(
    IOptions<RabbitMqOptions> rabbit, IOptions<MemoryServerOptions> options, IPageStore store, Sealing.HostKeyPair keys, Activities.VmCapabilities capabilities,
    ILogger<MemoryServerWorker> logger)
    : BackgroundService
{
    private readonly TaskCompletionSource ready = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Completes once the server takes requests (fails if it could not start).</summary>
    public Task Ready => ready.Task;

    private PageServer? running;

    /// <summary>The requests the server refused so far, by error (none before it runs).</summary>
    public IReadOnlyDictionary<string, long> Refusals => running?.Refusals ?? new Dictionary<string, long>();

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var o = options.Value;
        var factory = rabbit.Value.ConnectionFactory($"memory server {o.Host}");
        IConnection connection;
        PageServer server;
        try
        {
            connection = await factory.CreateConnectionAsync(stoppingToken);
            // The allenc baseline's channel keys come wrapped for the host's pinned key; a VM starts only with a
            // capability this host issued (see VmCapabilities).
            server = await PageServer.StartAsync(connection, o, store, logger, stoppingToken, keys,
                (migration, vm, shown) => System.Security.Cryptography.CryptographicOperations.FixedTimeEquals(capabilities.For(migration, vm), shown));
        }
        catch (Exception e)
        {
            ready.TrySetException(e);
            throw;
        }
        await using var closeConnection = connection;
        await using var closeServer = server;
        running = server;
        // The ready line: scripts and the benchmark wait for it.
        Console.WriteLine($"memory server {o.Host} ready");
        ready.TrySetResult();
        try
        {
            await Task.Delay(Timeout.Infinite, stoppingToken);
        }
        catch (OperationCanceledException)
        {
            logger.LogInformation("memory server {Host} stopping", o.Host);
        }
    }
}
