using System.Diagnostics;

namespace SEmigrate.Workers.Tests;

/// <summary>Runs the real `semigrate` executable built beside the tests.</summary>
internal static class SemigrateProcess
{
    public sealed record Result(int ExitCode, string Stdout, string Stderr);

    public static Task<Result> RunAsync(IReadOnlyDictionary<string, string> environment, params string[] args) => RunAsync(environment, null, args);

    /// <summary>With <paramref name="nsenter"/>, run inside another process's namespaces (nsenter's options).</summary>
    public static async Task<Result> RunAsync(IReadOnlyDictionary<string, string> environment, string[]? nsenter, params string[] args)
    {
        var semigrate = Path.Combine(AppContext.BaseDirectory, "semigrate");
        var start = nsenter is null ? new ProcessStartInfo(semigrate, args) : new ProcessStartInfo("nsenter", [.. nsenter, semigrate, .. args]);
        start.RedirectStandardOutput = true;
        start.RedirectStandardError = true;
        start.UseShellExecute = false;
        foreach (var (key, value) in environment)
        {
            start.Environment[key] = value;
        }
        using var process = Process.Start(start) ?? throw new InvalidOperationException("could not start semigrate");
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(2));
        await process.WaitForExitAsync(timeout.Token);
        return new Result(process.ExitCode, await stdout, await stderr);
    }

    /// <summary>A loopback port that nothing listens on: a stopped service, as a client sees it.</summary>
    public static int ClosedPort()
    {
        var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        var port = ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        return port;
    }
}
