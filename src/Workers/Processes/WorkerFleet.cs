using SEmigrate.Workers.Roles;

namespace SEmigrate.Workers.Processes;

/// <summary>One worker process per host, on this machine (the demo and the end-to-end tests): each with
/// its own state folder under <c>stateRoot</c>, and its log there too when <c>logDir</c> is set.</summary>
public sealed class WorkerFleet(string stateRoot, string? logDir) : IDisposable
{
    public sealed record Worker(string Role, string Host, long CapacityPages = 0, string? StoreFolder = null, double MaxMBps = 0);

    private readonly Dictionary<string, (Worker Spec, ChildProcess Process)> workers = new(StringComparer.Ordinal);

    public static async Task<WorkerFleet> StartAsync(IEnumerable<Worker> specs, string stateRoot, string? logDir, CancellationToken ct)
    {
        var fleet = new WorkerFleet(stateRoot, logDir);
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

    public IEnumerable<Worker> Workers => workers.Values.Select(w => w.Spec);

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
        var log = logDir is null ? null : Path.Combine(logDir, $"{w.Host}.log");
        return ChildProcess.StartAsync($"worker {w.Host} ({w.Role}) ready", log, ct, [.. args]);
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
