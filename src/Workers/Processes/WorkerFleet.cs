using RabbitMQ.Client;
using SEmigrate.Contracts.Migration;
using SEmigrate.Contracts.Paging;
using SEmigrate.Workers.Roles;

namespace SEmigrate.Workers.Processes;

/// <summary>One worker process per host, on this machine (the demo and the end-to-end tests): each with
/// its own state folder under <c>stateRoot</c>, and its log there too when <c>logDir</c> is set.</summary>
public sealed class WorkerFleet(string stateRoot, string? logDir, IReadOnlyDictionary<string, string>? environment = null) : IDisposable
{
    /// <summary>A host's worker; a source keeps its guests in <paramref name="GuestsFolder"/> (default: its state's guests folder).</summary>
    public sealed record Worker(string Role, string Host, long CapacityPages = 0, string? StoreFolder = null, double MaxMBps = 0, string? GuestsFolder = null);

    private readonly Dictionary<string, (Worker Spec, ChildProcess Process)> workers = new(StringComparer.Ordinal);

    public static async Task<WorkerFleet> StartAsync(IEnumerable<Worker> specs, string stateRoot, string? logDir, CancellationToken ct,
        IReadOnlyDictionary<string, string>? environment = null)
    {
        var fleet = new WorkerFleet(stateRoot, logDir, environment);
        try
        {
            var started = await Task.WhenAll(specs.Select(async s => (s, await fleet.SpawnAsync(s, ct))));
            foreach (var (spec, process) in started)
            {
                fleet.workers[spec.Host] = (spec, process);
            }
            return fleet;
        }
        catch
        {
            fleet.Dispose();
            throw;
        }
    }

    public ChildProcess this[string host] => workers[host].Process;

    /// <summary>CPU seconds so far, summed per role.</summary>
    public IReadOnlyDictionary<string, double> CpuSecondsByRole() =>
        RoleRegistration.Roles.ToDictionary(r => r, r => workers.Values.Where(w => w.Spec.Role == r).Sum(w => w.Process.CpuSeconds), StringComparer.Ordinal);

    /// <summary>Starts a host's worker again after it died (or was killed), with the same state folder.</summary>
    public async Task RestartAsync(string host, CancellationToken ct)
    {
        var (spec, old) = workers[host];
        old.Dispose();
        workers[host] = (spec, await SpawnAsync(spec, ct));
    }

    private Task<ChildProcess> SpawnAsync(Worker w, CancellationToken ct)
    {
        var args = new List<string> { "worker", "--role", w.Role, "--host", w.Host, "--state", Path.Combine(stateRoot, w.Host) };
        if (w.CapacityPages > 0)
        {
            args.AddRange(["--capacity-pages", w.CapacityPages.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        }
        if (w.MaxMBps > 0)
        {
            args.AddRange(["--max-mbps", w.MaxMBps.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        }
        if (w.StoreFolder is not null)
        {
            args.AddRange(["--store", w.StoreFolder]);
        }
        if (w.GuestsFolder is not null)
        {
            args.AddRange(["--guests", w.GuestsFolder]);
        }
        var log = logDir is null ? null : Path.Combine(logDir, $"{w.Host}.log");
        return ChildProcess.StartAsync($"worker {w.Host} ({w.Role}) ready", log, environment, ct, [.. args]);
    }

    /// <summary>For hosts that are gone for good (the demo's, the tests', the benchmark's): their queues
    /// on the broker go too (step queues, memory server queues, the queues of <paramref name="vms"/>
    /// they served), with any <paramref name="extraQueues"/>.</summary>
    public static async Task DeleteQueuesAsync(Uri rabbit, IEnumerable<string> hosts, IEnumerable<Guid> vms, params string[] extraQueues)
    {
        await using var connection = await new ConnectionFactory { Uri = rabbit, ClientProvidedName = "semigrate cleanup" }.CreateConnectionAsync();
        await DeleteQueuesAsync(connection, hosts, vms, extraQueues);
    }

    public static async Task DeleteQueuesAsync(IConnection connection, IEnumerable<string> hosts, IEnumerable<Guid> vms, params string[] extraQueues)
    {
        await using var channel = await connection.CreateChannelAsync();
        foreach (var host in hosts)
        {
            string[] queues =
            [
                StepQueues.Host(host), StepQueues.Host(host) + "_error", StepQueues.Host(host) + "_skipped", PageQueues.Control(host), PageQueues.Control(host) + ".dead",
                .. vms.SelectMany(vm => new[] { PageQueues.Bulk(host, vm), PageQueues.Fetch(host, vm) }),
            ];
            foreach (var queue in queues)
            {
                await channel.QueueDeleteAsync(queue);
            }
            await channel.ExchangeDeleteAsync(StepQueues.Host(host));
        }
        foreach (var queue in extraQueues)
        {
            await channel.QueueDeleteAsync(queue);
            await channel.ExchangeDeleteAsync(queue);
        }
    }

    public void Dispose()
    {
        foreach (var (_, process) in workers.Values)
        {
            process.Dispose();
        }
        workers.Clear();
    }
}
