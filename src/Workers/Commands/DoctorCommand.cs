using System.CommandLine;
using Microsoft.Extensions.DependencyInjection;
using SEmigrate.Workers.Doctor;

namespace SEmigrate.Workers.Commands;

public static class DoctorCommand
{
    public static RootCommand AddDoctorCommand(this RootCommand root)
    {
        var command = new Command("doctor",
            "Check that PostgreSQL (and a Marten store), RabbitMQ, Temporal and QEMU are usable; one line each");
        command.SetAction(async (_, ct) =>
        {
            var builder = SemigrateHost.CreateBuilder();
            builder.Services.AddSingleton<DoctorChecks>();
            using var host = builder.Build();
            var results = await host.Services.GetRequiredService<DoctorChecks>().RunAsync(ct);
            foreach (var r in results)
            {
                var status = r.Ok ? "ok" : r.Required ? "FAILED" : "missing";
                Console.WriteLine($"{r.Name,-9} {status,-7} {r.Detail}");
            }
            return results.Any(r => r.Required && !r.Ok) ? 1 : 0;
        });
        root.Subcommands.Add(command);
        return root;
    }
}
