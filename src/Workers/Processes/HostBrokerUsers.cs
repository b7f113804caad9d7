using System.Diagnostics;

namespace SEmigrate.Workers.Processes;

/// <summary>A broker user per host, made by deploy/services.sh host-user (the broker's administration
/// stays in that script): an isolated worker logs in as its own, which may declare, read and send to
/// names of its own only (and send to the default exchange).</summary>
public static class HostBrokerUsers
{
    public const string UriVariable = "SEMIGRATE__RabbitMq__Uri";

    /// <summary>Host NAME's user is this and NAME (deploy/services.sh).</summary>
    public const string UserPrefix = "semigrate-host-";

    public static string Script => Path.Combine(AppContext.BaseDirectory, "deploy", "services.sh");

    /// <summary>Each host's broker URI, on the virtual host of <paramref name="baseUri"/> (the fleet's).</summary>
    public static async Task<IReadOnlyDictionary<string, string>> CreateAsync(IReadOnlyCollection<string> hosts, Uri baseUri, CancellationToken ct)
    {
        var output = await RunAsync(["host-user", .. hosts], ct);
        var uris = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var line in output.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            if (line.Split(' ', 2) is [var host, var uri] && hosts.Contains(host))
            {
                uris[host] = new UriBuilder(uri) { Path = baseUri.AbsolutePath }.Uri.ToString();
            }
        }
        return uris.Count == hosts.Count ? uris
            : throw new InvalidOperationException($"deploy/services.sh host-user gave no user for {string.Join(", ", hosts.Except(uris.Keys))}");
    }

    /// <summary>Removes the users of hosts gone for good (best effort: a user left behind can reach only
    /// the queues of a host that no longer runs).</summary>
    public static void Delete(IReadOnlyCollection<string> hosts)
    {
        try
        {
            RunAsync(["host-user", "--delete", .. hosts], CancellationToken.None).GetAwaiter().GetResult();
        }
        catch (InvalidOperationException)
        {
        }
    }

    private static async Task<string> RunAsync(string[] args, CancellationToken ct)
    {
        var start = new ProcessStartInfo("bash", [Script, .. args]) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        using var process = Process.Start(start) ?? throw new InvalidOperationException("could not start bash");
        var stdout = process.StandardOutput.ReadToEndAsync(ct);
        var stderr = process.StandardError.ReadToEndAsync(ct);
        await process.WaitForExitAsync(ct);
        return process.ExitCode == 0 ? await stdout
            : throw new InvalidOperationException($"deploy/services.sh {args[0]} failed (exit code {process.ExitCode}): {(await stderr).Trim()}");
    }
}
