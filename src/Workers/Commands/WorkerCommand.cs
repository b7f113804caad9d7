using System.CommandLine;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using SEmigrate.MemoryServer;
using SEmigrate.Workers.Roles;

namespace SEmigrate.Workers.Commands;

/// <summary>`semigrate worker --role R --host NAME`: the worker process of one host.</summary>
public static class WorkerCommand
{
    public static RootCommand AddWorkerCommand(this RootCommand root)
    {
        var role = new Option<string>("--role") { Description = "sub: the memory server of a sub-host", Required = true };
        role.AcceptOnlyFromAmong("sub");
        var host = new Option<string>("--host") { Description = "This host's name (its queues are named after it)", Required = true };
        var store = new Option<DirectoryInfo?>("--store") { Description = "sub: keep pages in files in this folder (default: in memory)" };
        var capacity = new Option<long?>("--capacity-pages") { Description = "sub: how many 4 KiB pages it may hold (default 262144 = 1 GiB)" };
        var command = new Command("worker", "Run this host's worker process for a role until stopped (Ctrl+C)") { role, host, store, capacity };
        command.SetAction(async (parse, ct) =>
        {
            var builder = SemigrateHost.CreateBuilder();
            var overrides = new Dictionary<string, string?> { [$"{MemoryServerOptions.Section}:Host"] = parse.GetValue(host) };
            if (parse.GetValue(store) is { } folder)
            {
                overrides[$"{MemoryServerOptions.Section}:StoreFolder"] = folder.FullName;
            }
            if (parse.GetValue(capacity) is { } pages)
            {
                overrides[$"{MemoryServerOptions.Section}:CapacityPages"] = pages.ToString(System.Globalization.CultureInfo.InvariantCulture);
            }
            builder.Configuration.AddInMemoryCollection(overrides);
            builder.Services.AddOptions<MemoryServerOptions>().BindConfiguration(MemoryServerOptions.Section)
                .Validate(o => !string.IsNullOrWhiteSpace(o.Host) && !o.Host.Contains(' ', StringComparison.Ordinal), "MemoryServer:Host must be a name without spaces")
                .Validate(o => o.CapacityPages > 0, "MemoryServer:CapacityPages must be positive")
                .ValidateOnStart();
            builder.Services.AddHostedService<MemoryServerWorker>();
            using var app = builder.Build();
            await app.RunAsync(ct);
            return 0;
        });
        root.Subcommands.Add(command);
        return root;
    }
}
