using RabbitMQ.Client;
using SEmigrate.Contracts.Migration;
using SEmigrate.Contracts.Paging;
using SEmigrate.Workers.Roles;

namespace SEmigrate.Workers.Processes;

/// <summary>One worker process per host, on this machine (the demo and the end-to-end tests): each with
/// its own state folder under <c>stateRoot</c>, and its log there too when <c>logDir</c> is set.
/// <c>isolated</c> workers share nothing but the network, as hosts do: each runs in a mount namespace of
/// its own (unshare, as root) where its state folder is <see cref="IsolatedState"/> (the same path on
/// every host, so no path can name another host's files), a source's guests are
/// <see cref="IsolatedGuests"/>, and the folders of every other host (the fleet's state root and every
/// guests folder) are empty; and each host's worker logs in to the broker as a user of its own
/// (<see cref="HostBrokerUsers"/>), which reaches names of its own only.</summary>
public sealed class WorkerFleet(string stateRoot, string? logDir, IReadOnlyDictionary<string, string>? environment, bool isolated, IReadOnlyList<WorkerFleet.Worker> all)
    : IDisposable
{
    public const string IsolatedState = "/var/lib/semigrate/host";
    public const string IsolatedGuests = "/var/lib/semigrate/guests";

    /// <summary>Whether this process may isolate workers (mount namespaces need root).</summary>
    public static bool CanIsolate => Environment.IsPrivilegedProcess && File.Exists("/usr/bin/unshare");

    /// <summary>A host's worker; a source keeps its guests in <paramref name="GuestsFolder"/> (default: its state's guests folder).</summary>
    public sealed record Worker(string Role, string Host, long CapacityPages = 0, string? StoreFolder = null, double MaxMBps = 0, string? GuestsFolder = null);

    private readonly Dictionary<string, (Worker Spec, ChildProcess Process)> workers = new(StringComparer.Ordinal);
    private IReadOnlyDictionary<string, string> brokerUris = new Dictionary<string, string>();

    public static async Task<WorkerFleet> StartAsync(IReadOnlyList<Worker> specs, string stateRoot, string? logDir, CancellationToken ct,
        IReadOnlyDictionary<string, string>? environment = null, bool isolated = false)
    {
        if (isolated)
        {
            Directory.CreateDirectory(IsolatedState); // mount points, empty in this namespace
            Directory.CreateDirectory(IsolatedGuests);
        }
        var fleet = new WorkerFleet(stateRoot, logDir, environment, isolated, specs);
        try
        {
            var hosts = specs.Where(s => s.Role != "orchestrator").Select(s => s.Host).ToArray();
            if (isolated && hosts.Length > 0)
            {
                var broker = environment?.GetValueOrDefault(HostBrokerUsers.UriVariable) ?? Environment.GetEnvironmentVariable(HostBrokerUsers.UriVariable)
                    ?? throw new InvalidOperationException($"{HostBrokerUsers.UriVariable} is not set: whose virtual host would the workers use?");
                fleet.brokerUris = await HostBrokerUsers.CreateAsync(hosts, new Uri(broker), ct);
            }
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

    /// <summary>The broker URI a host's worker logs in with, when it has a user of its own.</summary>
    public string? BrokerUriOf(string host) => brokerUris.GetValueOrDefault(host);

    /// <summary>Where each worker wrote its identity (its state folder, seen from here).</summary>
    public IEnumerable<string> IdentityFiles => all.Select(w => Path.Combine(stateRoot, w.Host, Trust.HostIdentity.FileName));

    /// <summary>CPU seconds so far, summed per role.</summary>
    public IReadOnlyDictionary<string, double> CpuSecondsByRole() =>
        RoleRegistration.Roles.ToDictionary(r => r, r => workers.Values.Where(w => w.Spec.Role == r).Sum(w => w.Process.CpuSeconds), StringComparer.Ordinal);

    /// <summary>The most resident memory any worker of each role has had so far, in bytes.</summary>
    public IReadOnlyDictionary<string, long> PeakResidentBytesByRole() =>
        RoleRegistration.Roles.ToDictionary(r => r, r => workers.Values.Where(w => w.Spec.Role == r).Select(w => w.Process.PeakResidentBytes).DefaultIfEmpty().Max(), StringComparer.Ordinal);

    /// <summary>Starts a host's worker again after it died (or was killed), with the same state folder.</summary>
    public async Task RestartAsync(string host, CancellationToken ct)
    {
        var (spec, old) = workers[host];
        old.Dispose();
        workers[host] = (spec, await SpawnAsync(spec, ct));
    }

    private Task<ChildProcess> SpawnAsync(Worker w, CancellationToken ct)
    {
        var state = Path.Combine(stateRoot, w.Host);
        Directory.CreateDirectory(state);
        // Where the worker sees a folder of its own: at its real path, or under the common state path.
        string Own(string path) => !isolated ? path
            : path == state || path.StartsWith(state + "/", StringComparison.Ordinal) ? IsolatedState + path[state.Length..]
            : throw new ArgumentException($"an isolated worker keeps its folders in its state folder {state}, not {path}");
        var args = new List<string> { "worker", "--role", w.Role, "--host", w.Host, "--state", Own(state) };
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
            args.AddRange(["--store", Own(w.StoreFolder)]);
        }
        if (w.GuestsFolder is not null)
        {
            args.AddRange(["--guests", isolated ? IsolatedGuests : w.GuestsFolder]);
        }
        var log = logDir is null ? null : Path.Combine(logDir, $"{w.Host}.log");
        var env = brokerUris.TryGetValue(w.Host, out var uri)
            ? new Dictionary<string, string>(environment ?? new Dictionary<string, string>()) { [HostBrokerUsers.UriVariable] = uri }
            : environment;
        return ChildProcess.StartAsync($"worker {w.Host} ({w.Role}) ready", log, env, isolated ? Namespace(w, state) : [], ct, [.. args]);
    }

    /// <summary>The launcher of an isolated worker: a mount namespace where its own folders are bound to
    /// the common paths, then every folder of the fleet is covered by an empty tmpfs.</summary>
    private string[] Namespace(Worker w, string state)
    {
        static string Quoted(string path) => "'" + path.Replace("'", "'\\''", StringComparison.Ordinal) + "'";
        var script = new System.Text.StringBuilder("set -e\n");
        script.Append($"mount --bind {Quoted(state)} {IsolatedState}\n");
        if (w.GuestsFolder is not null)
        {
            script.Append($"mount --bind {Quoted(w.GuestsFolder)} {IsolatedGuests}\n");
        }
        foreach (var hidden in all.Select(x => x.GuestsFolder).OfType<string>().Prepend(stateRoot).Distinct(StringComparer.Ordinal))
        {
            script.Append($"mount -t tmpfs -o size=1m,mode=0755 another-host {Quoted(hidden)}\n");
        }
        script.Append("exec \"$@\"\n");
        return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script.ToString(), "sh"];
    }

    /// <summary>For hosts that are gone for good (the demo's, the tests', the benchmark's): their queues
    /// on the broker go too (step queues, memory server queues, the queues of <paramref name="vms"/>
    /// they served, their exits to <paramref name="auditQueues"/> and their other exits and entries), with any
    /// <paramref name="extraQueues"/>.</summary>
    public static async Task DeleteQueuesAsync(Uri rabbit, IEnumerable<string> hosts, IEnumerable<Guid> vms, IEnumerable<string>? auditQueues = null,
        params string[] extraQueues)
    {
        await using var connection = await new ConnectionFactory { Uri = rabbit, ClientProvidedName = "semigrate cleanup" }.CreateConnectionAsync();
        await DeleteQueuesAsync(connection, hosts, vms, auditQueues, extraQueues);
    }

    public static async Task DeleteQueuesAsync(IConnection connection, IEnumerable<string> hosts, IEnumerable<Guid> vms, IEnumerable<string>? auditQueues = null,
        params string[] extraQueues)
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
            foreach (var exchange in (auditQueues ?? []).Select(q => StepQueues.AuditExit(host, q)).Append(StepQueues.ProgressExit(host)).Append(StepQueues.CancelEntry(host)))
            {
                await channel.ExchangeDeleteAsync(exchange);
            }
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
        if (brokerUris.Count > 0)
        {
            HostBrokerUsers.Delete([.. brokerUris.Keys]);
            brokerUris = new Dictionary<string, string>();
        }
    }
}
