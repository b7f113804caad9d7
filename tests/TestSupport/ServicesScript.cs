using System.Diagnostics;

namespace SEmigrate.TestSupport;

/// <summary>Runs deploy/services.sh up once per test process (idempotent, locked against other
/// processes) and hands out the connection settings it prints.</summary>
public static class ServicesScript
{
    private static readonly Lazy<Task<IReadOnlyDictionary<string, string>>> Up = new(() => RunUpAsync());

    public static Task<IReadOnlyDictionary<string, string>> SettingsAsync() => Up.Value;

    public static string RepositoryRoot { get; } = FindRepositoryRoot();

    public static string ScriptPath => Path.Combine(RepositoryRoot, "deploy", "services.sh");

    private static async Task<IReadOnlyDictionary<string, string>> RunUpAsync()
    {
        var start = new ProcessStartInfo("bash", [ScriptPath, "up"])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        using var process = Process.Start(start) ?? throw new InvalidOperationException("could not start bash");
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException(
                $"deploy/services.sh up failed with exit code {process.ExitCode}:\n{await stderr}");
        }
        var settings = new Dictionary<string, string>(ParseSettings(await stdout));
        // The tests' own virtual host (services.sh makes it): nothing they publish reaches the default
        // vhost, where the demo's and an operator's workers and their durable queues live.
        if (settings.TryGetValue(RabbitMqUri, out var uri))
        {
            settings[RabbitMqUri] = new UriBuilder(uri) { Path = "/" + TestVirtualHost }.Uri.ToString();
        }
        return settings;
    }

    public const string TestVirtualHost = "semigrate-tests";

    private const string RabbitMqUri = "SEMIGRATE__RabbitMq__Uri";

    /// <summary>Lines of the form KEY='value'.</summary>
    public static IReadOnlyDictionary<string, string> ParseSettings(string text) =>
        text.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(line => line.Split('=', 2))
            .Where(kv => kv.Length == 2 && kv[0].StartsWith("SEMIGRATE__", StringComparison.Ordinal))
            .ToDictionary(kv => kv[0], kv => kv[1].Trim('\''));

    public static async Task<string> SettingAsync(string key) =>
        (await SettingsAsync()).TryGetValue(key, out var value)
            ? value
            : throw new InvalidOperationException($"deploy/services.sh up printed no {key}");

    private static string FindRepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "SEmigrate.sln")))
            {
                return dir.FullName;
            }
        }
        throw new InvalidOperationException($"no SEmigrate.sln above {AppContext.BaseDirectory}");
    }
}
